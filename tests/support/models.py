"""Random-weight captioning models saved with save_pretrained, for offline tests and benchmarks.

Tiny ones build in a second; ``blip_base`` has the architecture and compute of
Salesforce/blip-image-captioning-base (random weights: the captions are nonsense, the
timings are real).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = (
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "on",
    "the",
    "mat",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "sitting",
    "standing",
    "next",
    "to",
    "tree",
    "house",
    "car",
    "road",
    "sky",
    "with",
    "and",
    "in",
    "field",
    "water",
    "man",
    "woman",
    "child",
    "ball",
    "table",
)


def _no_special_tokens(model: Any, special_ids: list[int]) -> None:
    # Random weights often emit an end token first, which would make empty captions; banning
    # special tokens gives every caption max_new_tokens real words (and deterministic ones).
    model.generation_config.suppress_tokens = sorted(set(special_ids))


def build_blip(
    directory: Path,
    size: str = "tiny",
    max_new_tokens: int = 8,
    vision_width: int = 32,
    text_layers: int = 1,
    image_size: int = 32,
) -> Path:
    """A BLIP captioning model (BlipForConditionalGeneration + BlipProcessor). A tiny one's
    ``vision_width`` may differ from its text decoder's 32, as in BLIP-large (1024 and 768);
    more ``text_layers`` make its decoder's traced step (the compile) take longer;
    ``image_size`` 384 gives BLIP-base's input size (patches of 32 keep it tiny)."""
    import torch

    # transformers exports its tokenizers lazily: mypy does not see the *Fast names.
    from transformers import (  # type: ignore[attr-defined]
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if size == "base":
        # Same vocabulary size as bert-base-uncased (30522) so the LM head costs the same.
        vocab = [*specials, *WORDS] + [f"w{i}" for i in range(30522 - len(specials) - len(WORDS))]
    else:
        vocab = [*specials, *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if size == "base":
        image_processor = BlipImageProcessor()  # 384x384, as the real checkpoint
        config = BlipConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "bos_token_id": tokenizer.bos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "sep_token_id": tokenizer.sep_token_id,
            }
        )
    else:
        image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
        config = BlipConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "num_hidden_layers": text_layers,
                "num_attention_heads": 2,
                "intermediate_size": 37,
                "max_position_embeddings": 64,
                "bos_token_id": tokenizer.bos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "sep_token_id": tokenizer.sep_token_id,
            },
            vision_config={
                "hidden_size": vision_width,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 37,
                "image_size": image_size,
                "patch_size": 8 if image_size == 32 else 32,
            },
            projection_dim=32,
        )
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        # transformers 5 initialises BLIP's patch embedding near 1e-10: image embeddings near
        # 1e-7 and the same caption for every image. A ViT's usual scale makes captions
        # depend on the image, so comparing two paths' captions means something.
        model.vision_model.embeddings.patch_embedding.weight.normal_(std=0.02)
        # At init the decoder barely listens to the image (cross-attention values 0.02 beside
        # a residual of 1, attention scores near 0: a flat average of the image). Values 20x
        # and queries/keys 4x give image-dependent captions with attention scores of a trained
        # model's scale; 20x on queries and keys too gave scores near 100, so sharp that a
        # 1e-6 change in the image embeddings changed every caption.
        layers: Any = model.text_decoder.bert.encoder.layer
        for layer in layers:
            cross = layer.crossattention
            for linear, factor in (
                (cross.self.query, 4),
                (cross.self.key, 4),
                (cross.self.value, 20),
                (cross.output.dense, 20),
            ):
                linear.weight.mul_(factor)
    model.generation_config.max_new_tokens = max_new_tokens
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in [*specials, "[DEC]"]]
    _no_special_tokens(model, special_ids)
    # BLIP's text decoder generates with its own settings, so ban them in the weights too.
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[special_ids] = -1e4
    model.save_pretrained(directory)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def build_vit_gpt2(directory: Path, max_new_tokens: int = 8) -> Path:
    """A VisionEncoderDecoder ViT + GPT-2 model laid out like nlpconnect/vit-gpt2-image-captioning:
    image processor + tokenizer files, no processor_config.json."""
    import torch
    from transformers import (  # type: ignore[attr-defined]  # lazily exported, as above
        GPT2Config,
        GPT2TokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|endoftext|>": 0}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))  # a word at the start of a prompt
    first_spaced = len(vocab)
    for word in WORDS:
        vocab.setdefault("\u0120" + word, len(vocab))  # GPT-2's byte-level "space + word"
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=[])
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
    )
    # is_decoder goes through PretrainedConfig's **kwargs, which GPT2Config's signature hides.
    decoder = GPT2Config(  # type: ignore[call-arg]
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=64,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 0
    config.pad_token_id = 0
    config.eos_token_id = 0
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 0
    model.generation_config.max_new_tokens = max_new_tokens
    # Only " word" tokens are generated, so captions read as space-separated words.
    _no_special_tokens(model, list(range(first_spaced)))
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# A chat template shaped like Idefics3's and SmolVLM's: "User:<image>text<end_of_utterance>".
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _word_tokenizer(specials: list[str], extra: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A whole-word tokenizer over WORDS: unknown words become <unk>, decoding joins by spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*specials, *WORDS, *extra):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast: Any = PreTrainedTokenizerFast
    return fast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        **kwargs,
    )


def _only_words(model: Any, tokenizer: Any, vocab_size: int) -> None:
    """Let the random model say nothing but WORDS, so any scaffolding in a caption is an echo."""
    allowed = {tokenizer.convert_tokens_to_ids(word) for word in WORDS}
    _no_special_tokens(model, [i for i in range(vocab_size) if i not in allowed])


def build_idefics3(directory: Path, max_new_tokens: int = 8) -> Path:
    """An Idefics3 chat model (SmolVLM's ancestor) with its processor and chat template."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>"],
        ("<|im_start|>", "User", "Assistant", ":", "Describe", "this", "image", "one", "sentence"),
    )
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": 16}, max_image_size={"longest_edge": 16}
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,  # (16 // 4) ** 2 / scale_factor ** 2
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    vocab_size = len(tokenizer)
    config = Idefics3Config(
        use_cache=True,
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
        scale_factor=2,
        vision_config={
            "image_size": 16,
            "patch_size": 4,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _only_words(model, tokenizer, vocab_size)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_git(directory: Path, max_new_tokens: int = 8) -> Path:
    """A GIT captioning model (GitForCausalLM + GitProcessor); its prompt starts the caption."""
    import torch
    from transformers import (  # type: ignore[attr-defined]
        BertTokenizerFast,
        CLIPImageProcessor,
        GitConfig,
        GitForCausalLM,
        GitProcessor,
    )

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    # GIT starts every caption at [CLS], which BERT's tokenizer adds, as the real one does.
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab)},
        model_input_names=["input_ids", "attention_mask"],  # as microsoft/git-base's
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    config = GitConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        bos_token_id=tokenizer.convert_tokens_to_ids("[CLS]"),
        eos_token_id=tokenizer.convert_tokens_to_ids("[SEP]"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GitForCausalLM(config)
    model.generation_config.max_new_tokens = max_new_tokens
    _only_words(model, tokenizer, len(tokenizer))
    model.save_pretrained(directory)
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def build_florence2(directory: Path, max_new_tokens: int = 8) -> Path:
    """A Florence-2 model (DaViT + BART) whose processor turns task prompts into questions."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>", "<image>"],
        ("What", "does", "the", "image", "describe", "?", "Describe", "in", "detail"),
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"height": 8, "width": 8},
        crop_size={"height": 8, "width": 8},
        do_center_crop=False,
        image_seq_length=5,
    )
    config = Florence2Config(
        text_config={
            "model_type": "bart",
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 64,
            "encoder_layers": 1,
            "encoder_ffn_dim": 16,
            "encoder_attention_heads": 1,
            "decoder_layers": 1,
            "decoder_ffn_dim": 16,
            "decoder_attention_heads": 1,
            "d_model": 16,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "decoder_start_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "patch_size": [7],
            "depths": [1],
            "patch_stride": [4],
            "patch_padding": [3],
            "patch_prenorm": [False],
            "embed_dim": [16],
            "num_heads": [1],
            "num_groups": [1],
            "window_size": 12,
            "projection_dim": 16,
        },
        image_token_id=tokenizer.image_token_id,
    )
    model = Florence2ForConditionalGeneration(config)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.decoder_start_token_id = tokenizer.eos_token_id
    # BART forces </s> at the end, which cannot be while only WORDS may be said.
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None
    _only_words(model, tokenizer, len(tokenizer))
    model.save_pretrained(directory)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        directory
    )
    return directory


def build_paligemma(directory: Path, max_new_tokens: int = 8) -> Path:
    """A PaliGemma model (SigLIP + Gemma); its prompts are instructions such as "caption en"."""
    import torch
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_tokenizer(["<pad>", "</s>", "<s>", "<unk>"], ("caption", "en"))
    image_processor = SiglipImageProcessor(size={"height": 16, "width": 16}, image_seq_length=4)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
            "projection_dim": 32,
        },
        text_config={
            "model_type": "gemma",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_index=processor.image_token_id,
        projection_dim=32,
    )
    model = PaliGemmaForConditionalGeneration(config)
    model.generation_config.max_new_tokens = max_new_tokens
    _only_words(model, tokenizer, len(tokenizer))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def build_smolvlm(directory: Path, max_new_tokens: int = 8) -> Path:
    """A SmolVLM chat model. Its processor needs torchvision: without it only the model is
    saved, which is enough to see the load refused with the extra to install."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>"],
        ("<|im_start|>", "User", "Assistant", ":", "Describe", "this", "image", "one", "sentence"),
    )
    scaffolding = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tokenizer.add_tokens([*scaffolding, "<video>"], special_tokens=True)
    vocab_size = len(tokenizer)
    config = SmolVLMConfig(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
        vision_config={
            "image_size": 16,
            "patch_size": 4,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
    )
    model = SmolVLMForConditionalGeneration(config)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _only_words(model, tokenizer, vocab_size)
    model.save_pretrained(directory)
    if _has_torchvision():
        from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

        image_processor = SmolVLMImageProcessor(
            do_image_splitting=False,
            size={"longest_edge": 16},
            max_image_size={"longest_edge": 16},
        )
        SmolVLMProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=SmolVLMVideoProcessor(),
            image_seq_len=4,
            chat_template=IDEFICS3_CHAT_TEMPLATE,
        ).save_pretrained(directory)
    else:
        tokenizer.save_pretrained(directory)
    return directory


def build_qwen2_vl(directory: Path, max_new_tokens: int = 8) -> Path:
    """A Qwen2-VL chat model (as Qwen2.5-VL: the same processor). Its processor needs
    torchvision: without it only the model and tokenizer are saved."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>"],
        ("user", "assistant", "Describe", "this", "image", "one", "sentence"),
    )
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    tokenizer.add_tokens([*specials, "<|image_pad|>", "<|video_pad|>"], special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.get_vocab()}
    vocab_size = len(tokenizer)
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _only_words(model, tokenizer, vocab_size)
    model.save_pretrained(directory)
    if _has_torchvision():
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        pixels = 56 * 56  # a 4x4 grid of 14 px patches, merged 2x2: 4 image tokens
        image_processor = Qwen2VLImageProcessor(
            size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=14, merge_size=2
        )
        Qwen2VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=QWEN2_VL_CHAT_TEMPLATE,
        ).save_pretrained(directory)
    else:
        tokenizer.save_pretrained(directory)
    return directory
