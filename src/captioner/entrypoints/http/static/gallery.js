/* Captioner gallery: uploads, infinite scroll, search, detail, edit and delete over the JSON API.
 *
 * Everything that comes from the server or from a file name reaches the page through
 * textContent or element attributes, never through HTML parsing, so a caption or a name
 * that contains markup shows as text.
 */
(() => {
  "use strict";

  const byId = (id) => document.getElementById(id);
  const body = document.body;
  const PAGE_SIZE = Number(body.dataset.pageSize) || 30;
  const SEARCH_LIMIT = 100;
  const MAX_UPLOAD_BYTES = Number(body.dataset.maxUploadBytes) || 0;
  const MAX_UPLOAD_MB = body.dataset.maxUploadMb || "";
  const PARALLEL_UPLOADS = 3;
  const SEARCH_DELAY_MS = 250;

  const ui = {
    grid: byId("grid"),
    cardTemplate: byId("card-template"),
    emptyState: byId("empty-state"),
    noResults: byId("no-results"),
    noResultsQuery: byId("no-results-query"),
    clearSearch: byId("clear-search"),
    more: byId("more"),
    loading: byId("loading"),
    loadMore: byId("load-more"),
    galleryError: byId("gallery-error"),
    summary: byId("gallery-summary"),
    heading: byId("gallery-heading"),
    search: byId("search"),
    modelPick: byId("model-pick"),
    searchForm: byId("search-form"),
    uploadForm: byId("upload-form"),
    dropzone: byId("dropzone"),
    fileInput: byId("file-input"),
    prompt: byId("prompt"),
    uploadPanel: byId("upload-panel"),
    uploadList: byId("upload-list"),
    uploadTemplate: byId("upload-template"),
    clearUploads: byId("clear-uploads"),
    dialog: byId("detail"),
    detailImage: byId("detail-image"),
    detailCaption: byId("detail-caption"),
    detailClose: byId("detail-close"),
    copyCaption: byId("copy-caption"),
    editStart: byId("edit-start"),
    editForm: byId("edit-form"),
    editText: byId("edit-text"),
    editCancel: byId("edit-cancel"),
    editSave: byId("edit-save"),
    editError: byId("edit-error"),
    detailOriginal: byId("detail-original"),
    detailName: byId("detail-name"),
    detailModel: byId("detail-model"),
    detailRevision: byId("detail-revision"),
    detailGeneration: byId("detail-generation"),
    detailDuration: byId("detail-duration"),
    detailCaptions: byId("detail-captions"),
    detailPromptRow: byId("detail-prompt-row"),
    detailPrompt: byId("detail-prompt"),
    detailSize: byId("detail-size"),
    detailDate: byId("detail-date"),
    detailSha: byId("detail-sha"),
    deleteStart: byId("delete-start"),
    deleteConfirm: byId("delete-confirm"),
    deleteCancel: byId("delete-cancel"),
    deleteYes: byId("delete-yes"),
    detailError: byId("detail-error"),
    toast: byId("toast"),
    announcer: byId("announcer"),
    signIn: byId("sign-in"),
    signInForm: byId("sign-in-form"),
    signInKey: byId("sign-in-key"),
    signInSubmit: byId("sign-in-submit"),
    signInError: byId("sign-in-error"),
    uploadSection: byId("upload-section"),
    gallerySection: byId("gallery-section"),
    dangerZone: byId("danger-zone"),
    account: byId("account"),
    accountName: byId("account-name"),
    accountScope: byId("account-scope"),
    signOut: byId("sign-out"),
  };

  const gallery = {
    query: "",
    next: null,
    loading: false,
    failed: false,
    generation: 0,
    shown: new Map(), // id -> { record, card }
    canEdit: true, // what the session allows; keys off means anyone may
  };

  /* Small helpers ------------------------------------------------------------------------ */

  const plural = (count, one, many) => `${count} ${count === 1 ? one : many}`;

  function captionOf(record) {
    return record.description || "Image without a caption";
  }

  // Image types every current browser displays; others are shown through their thumbnail.
  const SHOWN_AS_IS = new Set([
    "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/avif",
  ]);

  function imageUrl(record, kind) {
    // ?v= makes the URL name the bytes, so a year of immutable caching stays right even
    // if this address later serves another data directory.
    const version = encodeURIComponent(String(record.sha256).slice(0, 16));
    return `/images/${encodeURIComponent(String(record.id))}/${kind}?v=${version}`;
  }

  function nextLink(header) {
    const match = /<([^>]+)>\s*;\s*rel="?next"?/.exec(header || "");
    // Only follow links back into this service.
    return match && match[1].startsWith("/") && !match[1].startsWith("//") ? match[1] : null;
  }

  async function readError(response) {
    try {
      const data = await response.json();
      if (data && typeof data.error === "string") return data.error;
    } catch (_) {
      /* not JSON: fall through */
    }
    return `The server answered ${response.status} ${response.statusText}.`.trim();
  }

  function formatDate(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso || "";
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function formatBytes(bytes) {
    if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  function typeName(contentType) {
    const sub = String(contentType || "").split("/")[1] || "";
    return sub ? sub.toUpperCase() : "image";
  }

  let toastTimer = 0;
  function toast(message) {
    ui.toast.textContent = message;
    ui.toast.classList.add("is-visible");
    window.clearTimeout(toastTimer);
    toastTimer = window.setTimeout(() => ui.toast.classList.remove("is-visible"), 2600);
  }

  function announce(message) {
    // Screen readers hear each finished upload once, not every progress step.
    ui.announcer.textContent = message;
  }

  /* Gallery: cards, pages, infinite scroll, search ---------------------------------------- */

  function makeCard(record) {
    const card = ui.cardTemplate.content.firstElementChild.cloneNode(true);
    card.dataset.id = String(record.id);
    const image = card.querySelector("img");
    image.alt = captionOf(record);
    image.addEventListener("error", () => {
      // No thumbnail (an image Pillow could not shrink): show the original instead, once.
      if (image.dataset.fallback) return;
      image.dataset.fallback = "1";
      image.src = imageUrl(record, "file");
    });
    image.src = imageUrl(record, "thumbnail");
    fillCard(card, record);
    const button = card.querySelector("button");
    button.addEventListener("click", () => openDetail(record.id, button));
    return card;
  }

  function fillCard(card, record) {
    card.querySelector("img").alt = captionOf(record);
    card.querySelector(".card-caption").textContent = captionOf(record);
    card.querySelector(".card-name").textContent = record.original_name || "Untitled image";
    // Which model wrote the caption shown (an image may have captions by several).
    const count = record.captions > 1 ? ` · ${plural(record.captions, "caption", "captions")}` : "";
    // The model's last name part fits a card (a local directory's full path does not); the
    // full name stays in the tooltip. A person's caption says so.
    const model = card.querySelector(".card-model");
    const writer = record.source === "person" ? "edited" : record.model.split("/").filter(Boolean).pop();
    model.textContent = `${writer || record.model}${count}`;
    model.title = record.source === "person" ? `Written by ${personOf(record)}` : record.model;
  }

  function personOf(record) {
    return (record.generation && record.generation.by) || "a person";
  }

  function addCard(record, where) {
    const known = gallery.shown.get(record.id);
    if (known) return known.card;
    const card = makeCard(record);
    if (where === "start") {
      ui.grid.prepend(card);
      card.classList.add("is-new");
    } else {
      ui.grid.append(card);
    }
    gallery.shown.set(record.id, { record, card });
    return card;
  }

  function removeCard(id) {
    const known = gallery.shown.get(id);
    if (!known) return null;
    const following = known.card.nextElementSibling || known.card.previousElementSibling;
    known.card.remove();
    gallery.shown.delete(id);
    render();
    return following ? following.querySelector("button") : null;
  }

  function render() {
    const count = gallery.shown.size;
    const settled = !gallery.loading && !gallery.failed;
    const searching = gallery.query !== "";
    ui.loading.hidden = !gallery.loading;
    ui.loadMore.hidden = gallery.loading || !(gallery.next || gallery.failed);
    ui.loadMore.textContent = gallery.failed ? "Try again" : "Load more images";
    ui.emptyState.hidden = !(settled && !searching && count === 0 && !gallery.next);
    ui.noResults.hidden = !(settled && searching && count === 0);
    ui.noResultsQuery.textContent = gallery.query;
    if (searching) {
      if (gallery.loading) ui.summary.textContent = "Searching…";
      else if (count === 0) ui.summary.textContent = ""; // the no-results box says it
      else ui.summary.textContent = `${plural(count, "match", "matches")} for “${gallery.query}”, best first`;
    } else if (count === 0) {
      ui.summary.textContent = "";
    } else {
      ui.summary.textContent = gallery.next
        ? "Newest first"
        : `${plural(count, "image", "images")}, newest first`;
    }
  }

  async function loadPage(url) {
    if (gallery.loading) return;
    const generation = gallery.generation;
    gallery.loading = true;
    gallery.failed = false;
    ui.galleryError.hidden = true;
    render();
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (generation !== gallery.generation) return;
      if (response.status === 401) {
        askForKey("Your sign-in has ended. Enter a key to go on.");
        return;
      }
      if (!response.ok) throw new Error(await readError(response));
      const records = await response.json();
      if (generation !== gallery.generation) return;
      for (const record of records) addCard(record, "end");
      gallery.next = nextLink(response.headers.get("Link"));
    } catch (error) {
      if (generation !== gallery.generation) return;
      gallery.failed = true;
      ui.galleryError.textContent = `Could not load images. ${error.message || error}`;
      ui.galleryError.hidden = false;
    } finally {
      if (generation === gallery.generation) {
        gallery.loading = false;
        render();
        window.requestAnimationFrame(loadMoreIfNearEnd);
      }
    }
  }

  function firstPageUrl() {
    const model = ui.modelPick.value ? `&model=${encodeURIComponent(ui.modelPick.value)}` : "";
    if (gallery.query) {
      return `/images?q=${encodeURIComponent(gallery.query)}&limit=${SEARCH_LIMIT}${model}`;
    }
    return `/images?limit=${PAGE_SIZE}${model}`;
  }

  async function loadModels() {
    // The models present fill the picker; "current caption" (each image's own) stays first.
    try {
      const response = await fetch("/models", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const models = await response.json();
      for (const entry of models) {
        const option = pickOption(entry.model);
        // "person" is the captions people corrected, not a model: say so in the picker.
        const name = entry.model === "person" ? "Corrected by people" : entry.model;
        option.textContent = `${name} (${plural(entry.images, "image", "images")})`;
      }
    } catch (_) {
      // The picker is extra: the gallery stands without it.
    }
  }

  function pickOption(model) {
    const known = [...ui.modelPick.options].find((option) => option.value === model);
    if (known) return known;
    const option = document.createElement("option");
    option.value = model;
    option.textContent = model;
    ui.modelPick.append(option);
    return option;
  }

  ui.modelPick.addEventListener("change", () => {
    const url = new URL(window.location.href);
    if (ui.modelPick.value) url.searchParams.set("model", ui.modelPick.value);
    else url.searchParams.delete("model");
    window.history.replaceState(null, "", url);
    reload();
  });

  function reload() {
    gallery.generation += 1;
    gallery.loading = false;
    gallery.failed = false;
    gallery.next = null;
    gallery.shown.clear();
    ui.grid.replaceChildren();
    ui.galleryError.hidden = true;
    loadPage(firstPageUrl());
  }

  function loadMore() {
    if (gallery.loading) return;
    if (gallery.failed && gallery.shown.size === 0) {
      reload();
    } else if (gallery.next) {
      loadPage(gallery.next);
    } else if (gallery.failed) {
      reload();
    }
  }

  function loadMoreIfNearEnd() {
    if (!gallery.next || gallery.loading || gallery.failed) return;
    if (ui.more.getBoundingClientRect().top < window.innerHeight + 800) loadMore();
  }

  function setQuery(raw) {
    const query = raw.trim();
    if (query === gallery.query) return;
    gallery.query = query;
    const url = new URL(window.location.href);
    if (query) url.searchParams.set("q", query);
    else url.searchParams.delete("q");
    window.history.replaceState(null, "", url);
    ui.heading.textContent = query ? "Search results" : "Your images";
    reload();
    // Results appear below the upload area: bring them into view when they would be missed.
    if (query && ui.heading.getBoundingClientRect().top > window.innerHeight * 0.6) {
      ui.heading.scrollIntoView({ block: "start" });
    }
  }

  let searchTimer = 0;
  ui.search.addEventListener("input", () => {
    window.clearTimeout(searchTimer);
    searchTimer = window.setTimeout(() => setQuery(ui.search.value), SEARCH_DELAY_MS);
  });
  ui.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    window.clearTimeout(searchTimer);
    setQuery(ui.search.value);
  });
  ui.clearSearch.addEventListener("click", () => {
    ui.search.value = "";
    setQuery("");
    ui.search.focus();
  });
  ui.loadMore.addEventListener("click", loadMore);

  if ("IntersectionObserver" in window) {
    new IntersectionObserver(
      (entries) => {
        if (entries.some((entry) => entry.isIntersecting)) loadMoreIfNearEnd();
      },
      { rootMargin: "800px 0px" },
    ).observe(ui.more);
  }
  window.addEventListener("scroll", loadMoreIfNearEnd, { passive: true });

  /* Uploads ------------------------------------------------------------------------------ */

  const queue = [];
  let active = 0;

  function makeUploadItem(file) {
    const item = ui.uploadTemplate.content.firstElementChild.cloneNode(true);
    item.querySelector(".upload-name").textContent = file.name || "Pasted image";
    const preview = item.querySelector("img");
    if (file.type.startsWith("image/")) {
      const objectUrl = URL.createObjectURL(file);
      preview.addEventListener("load", () => URL.revokeObjectURL(objectUrl), { once: true });
      preview.addEventListener(
        "error",
        () => {
          URL.revokeObjectURL(objectUrl);
          preview.hidden = true;
        },
        { once: true },
      );
      preview.src = objectUrl;
    } else {
      preview.hidden = true;
    }
    return item;
  }

  function setUploadState(item, state, badge, status, retryable = false) {
    item.classList.remove("is-queued", "is-uploading", "is-describing", "is-done", "is-duplicate", "is-error");
    item.classList.add(`is-${state}`);
    item.dataset.state = state;
    item.querySelector(".badge").textContent = badge;
    item.querySelector(".upload-status").textContent = status;
    item.querySelector(".upload-retry").hidden = !retryable;
    if (state === "error") {
      announce(`${item.querySelector(".upload-name").textContent} was not added: ${status}`);
    }
    ui.clearUploads.hidden = !ui.uploadList.querySelector(".is-done, .is-duplicate, .is-error");
  }

  function setProgress(item, fraction) {
    const progress = item.querySelector("progress");
    const percent = Math.max(0, Math.min(100, Math.round(fraction * 100)));
    progress.value = percent;
    setUploadState(item, "uploading", `${percent}%`, `Uploading… ${percent}%`);
  }

  function enqueue(files) {
    if (document.body.dataset.modelState === "failed") {
      toast("The model failed to load: uploads are off until the server is restarted");
      return;
    }
    const prompt = ui.prompt.value.trim();
    const items = files.map(makeUploadItem);
    // The newest batch goes on top, its files in the order they were picked.
    ui.uploadList.prepend(...items);
    ui.uploadPanel.hidden = false;
    files.forEach((file, index) => {
      const item = items[index];
      if (MAX_UPLOAD_BYTES && file.size > MAX_UPLOAD_BYTES) {
        // The server refuses it too; saying so now spares sending megabytes for nothing.
        setUploadState(
          item,
          "error",
          "Too large",
          `This file is ${formatBytes(file.size)}; the limit is ${MAX_UPLOAD_MB} MB. Upload a smaller image.`,
        );
        return;
      }
      const job = { file, prompt, item };
      item.querySelector(".upload-retry").addEventListener("click", () => retry(job));
      setUploadState(item, "queued", "Waiting", "Waiting to upload…");
      queue.push(job);
    });
    pump();
  }

  function retry(job) {
    setUploadState(job.item, "queued", "Waiting", "Waiting to upload…");
    job.item.querySelector("progress").value = 0;
    queue.push(job);
    pump();
  }

  function pump() {
    while (active < PARALLEL_UPLOADS && queue.length > 0) {
      const job = queue.shift();
      active += 1;
      upload(job).finally(() => {
        active -= 1;
        pump();
      });
    }
  }

  function upload({ file, prompt, item }) {
    return new Promise((resolve) => {
      const form = new FormData();
      form.append("image", file, file.name || "pasted-image");
      if (prompt) form.append("prompt", prompt);
      const request = new XMLHttpRequest();
      request.open("POST", "/upload");
      request.responseType = "json";
      request.setRequestHeader("Accept", "application/json");
      setProgress(item, 0);
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) setProgress(item, event.loaded / event.total);
      });
      request.upload.addEventListener("load", () => {
        item.querySelector("progress").removeAttribute("value");
        setUploadState(item, "describing", "Describing", "Writing a caption…");
      });
      request.addEventListener("load", () => {
        const data = request.response;
        if (request.status === 200 && data && typeof data.id === "number") {
          uploaded(item, data);
        } else {
          if (request.status === 401) askForKey("Your sign-in has ended. Enter a key to go on.");
          const message =
            data && typeof data.error === "string"
              ? data.error
              : `The upload failed (HTTP ${request.status}). Try again.`;
          // Busy, still loading or a server fault may pass; a refused file will not.
          const retryable = request.status === 0 || request.status >= 500;
          setUploadState(item, "error", "Not added", message, retryable);
        }
        resolve();
      });
      request.addEventListener("error", () => {
        setUploadState(
          item,
          "error",
          "Not added",
          "The upload did not reach the server. Check the connection and try again.",
          true,
        );
        resolve();
      });
      request.send(form);
    });
  }

  function uploaded(item, record) {
    const caption = captionOf(record);
    const name = item.querySelector(".upload-name").textContent;
    announce(record.duplicate ? `${name} is already in the gallery: ${caption}` : `${name}: ${caption}`);
    if (record.duplicate) {
      setUploadState(item, "duplicate", "Already in gallery", caption);
    } else {
      setUploadState(item, "done", "Captioned", caption);
    }
    item.dataset.id = String(record.id);
    if (!gallery.query) {
      // One card per image: a new caption (another prompt) of bytes shown already flashes it.
      const known =
        gallery.shown.get(record.id) ||
        [...gallery.shown.values()].find((entry) => entry.record.sha256 === record.sha256);
      if (known) {
        known.card.classList.remove("is-new");
        void known.card.offsetWidth; // restart the arrival animation
        known.card.classList.add("is-new");
      } else if (!record.duplicate || !gallery.next) {
        // A duplicate of an image further down the (not yet loaded) list stays where it is.
        addCard(record, "start");
      }
      render();
    }
  }

  ui.fileInput.addEventListener("change", () => {
    const files = Array.from(ui.fileInput.files || []);
    ui.fileInput.value = ""; // choosing the same file again still fires change
    if (files.length) enqueue(files);
  });
  ui.uploadForm.addEventListener("submit", (event) => event.preventDefault());
  ui.clearUploads.addEventListener("click", () => {
    for (const item of ui.uploadList.querySelectorAll(".is-done, .is-duplicate, .is-error")) {
      item.remove();
    }
    ui.clearUploads.hidden = true;
    ui.uploadPanel.hidden = ui.uploadList.children.length === 0;
  });

  const carriesFiles = (event) =>
    Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    ui.dropzone.classList.add("is-dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) ui.dropzone.classList.remove("is-dragging");
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    ui.dropzone.classList.remove("is-dragging");
    const files = Array.from(event.dataTransfer.files || []);
    if (files.length) enqueue(files);
  });
  document.addEventListener("paste", (event) => {
    if (event.target instanceof HTMLInputElement) return; // pasting text into a field
    const files = Array.from((event.clipboardData && event.clipboardData.files) || []);
    if (files.length) {
      event.preventDefault();
      enqueue(files);
    }
  });

  /* Detail view, copy, delete ----------------------------------------------------------- */

  let detail = null; // { record, opener }

  function openDetail(id, opener) {
    const known = gallery.shown.get(id);
    if (!known) return;
    const record = known.record;
    detail = { record, opener };
    ui.detailImage.alt = captionOf(record);
    delete ui.detailImage.dataset.fallback;
    // Formats most browsers cannot show (HEIC, TIFF) get the WebP rendition at once, rather
    // than a failed load of the original first; /file still serves the original.
    ui.detailImage.src = imageUrl(record, SHOWN_AS_IS.has(record.content_type) ? "file" : "thumbnail");
    ui.detailCaption.textContent = captionOf(record);
    ui.detailName.textContent = record.original_name || "—";
    ui.detailModel.textContent = record.model;
    ui.detailPromptRow.hidden = !record.prompt;
    ui.detailPrompt.textContent = record.prompt || "";
    ui.detailSize.textContent = `${record.width} × ${record.height} px · ${typeName(record.content_type)}`;
    ui.detailDate.dateTime = record.created_at;
    ui.detailDate.textContent = formatDate(record.created_at);
    ui.detailSha.textContent = record.sha256;
    ui.detailRevision.textContent = record.model_revision || "unknown";
    ui.detailGeneration.textContent = settingsText(record.generation);
    ui.detailDuration.textContent =
      record.duration_ms == null ? "unknown" : `${Math.round(record.duration_ms)} ms`;
    ui.detailOriginal.href = imageUrl(record, "file");
    loadCaptions(record);
    ui.copyCaption.textContent = "Copy caption";
    ui.detailError.hidden = true;
    hideConfirm();
    hideEdit();
    ui.editStart.hidden = !gallery.canEdit;
    if (!ui.dialog.open) ui.dialog.showModal();
    ui.detailClose.focus();
  }

  function settingsText(generation) {
    const entries = Object.entries(generation || {}).filter(([name]) => name !== "prompt");
    return entries.length ? entries.map(([name, value]) => `${name}=${value}`).join(", ") : "unknown";
  }

  async function loadCaptions(record) {
    // Every model and prompt that described these bytes; the list is for this record only.
    ui.detailCaptions.replaceChildren();
    const shown = detail;
    let captions = [];
    try {
      const response = await fetch(`/images/${encodeURIComponent(String(record.id))}/captions`, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) return;
      captions = await response.json();
    } catch (error) {
      return; // the captions list is extra: the detail view stands without it
    }
    if (detail !== shown) return;
    for (const caption of captions) {
      const item = document.createElement("li");
      item.className = "caption-item";
      const text = document.createElement("p");
      text.textContent = captionOf(caption);
      const meta = document.createElement("p");
      meta.className = "caption-meta";
      const parts = [caption.source === "person" ? `edited by ${personOf(caption)}` : caption.model];
      if (caption.prompt) parts.push(`prompt “${caption.prompt}”`);
      parts.push(caption.model_revision ? `revision ${caption.model_revision.slice(0, 19)}` : "revision unknown");
      parts.push(formatDate(caption.created_at));
      meta.textContent = parts.join(" · ");
      item.append(text, meta);
      ui.detailCaptions.append(item);
    }
  }

  /* In-place edit: the caption a person writes is shown (and searched) before the model's. */

  function hideEdit() {
    ui.editForm.hidden = true;
    ui.detailCaption.hidden = false;
    ui.editSave.disabled = false;
    ui.editError.hidden = true;
  }

  function startEdit() {
    if (!detail) return;
    ui.editText.value = detail.record.description || "";
    ui.detailCaption.hidden = true;
    ui.editForm.hidden = false;
    ui.editError.hidden = true;
    ui.editText.focus();
    ui.editText.select();
  }

  function cancelEdit() {
    hideEdit();
    ui.editStart.focus();
  }

  async function saveEdit() {
    if (!detail || ui.editSave.disabled) return;
    const shown = detail;
    const text = ui.editText.value.trim();
    if (!text) {
      ui.editError.textContent = "Write what the image shows, or press Escape to keep the caption.";
      ui.editError.hidden = false;
      return;
    }
    ui.editSave.disabled = true;
    let edited;
    try {
      const response = await fetch(`/images/${encodeURIComponent(String(shown.record.id))}`, {
        method: "PATCH",
        body: JSON.stringify({ description: text }),
        headers: { Accept: "application/json", "Content-Type": "application/json" },
      });
      if (response.status === 401) askForKey("Your sign-in has ended. Enter a key to go on.");
      if (!response.ok) throw new Error(await readError(response));
      edited = await response.json();
    } catch (error) {
      const message = `Could not save the caption. ${error.message || error}`;
      if (detail === shown) {
        ui.editSave.disabled = false;
        ui.editError.textContent = message;
        ui.editError.hidden = false;
      } else {
        toast(message);
      }
      return;
    }
    // The card keeps its place (it is keyed by the record it was listed with); it now shows
    // the person's caption, one more caption of the image when this is the first edit.
    const before = shown.record;
    const captions = (before.captions || 1) + (before.source === "person" ? 0 : 1);
    const record = { ...edited, captions };
    for (const known of gallery.shown.values()) {
      if (known.record.sha256 === record.sha256) {
        known.record = record;
        fillCard(known.card, record);
      }
    }
    if (detail === shown) {
      shown.record = record;
      ui.detailCaption.textContent = captionOf(record);
      ui.detailImage.alt = captionOf(record);
      ui.detailModel.textContent = record.model;
      ui.detailGeneration.textContent = settingsText(record.generation);
      ui.detailDuration.textContent = "unknown";
      hideEdit();
      loadCaptions(record);
      ui.editStart.focus();
    }
    announce(`Caption saved: ${captionOf(record)}`);
    toast("Caption saved");
  }

  ui.editStart.addEventListener("click", startEdit);
  ui.editCancel.addEventListener("click", cancelEdit);
  ui.editForm.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit();
  });
  ui.editText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      saveEdit();
    } else if (event.key === "Escape") {
      event.preventDefault(); // Escape cancels the edit, not the whole dialog
      event.stopPropagation();
      cancelEdit();
    }
  });
  ui.dialog.addEventListener("cancel", (event) => {
    // The dialog's own Escape handling: while editing it cancels the edit first.
    if (!ui.editForm.hidden) {
      event.preventDefault();
      cancelEdit();
    }
  });

  function hideConfirm() {
    ui.deleteConfirm.hidden = true;
    ui.deleteStart.hidden = false;
    ui.deleteYes.disabled = false;
  }

  ui.detailImage.addEventListener("error", () => {
    // Browsers cannot show every stored format (TIFF): the thumbnail is always a WebP.
    if (!detail || ui.detailImage.dataset.fallback) return;
    ui.detailImage.dataset.fallback = "1";
    ui.detailImage.src = imageUrl(detail.record, "thumbnail");
  });

  ui.dialog.addEventListener("close", () => {
    ui.detailImage.removeAttribute("src");
    const opener = detail && detail.opener;
    detail = null;
    if (opener && opener.isConnected) opener.focus();
  });
  ui.dialog.addEventListener("click", (event) => {
    if (event.target === ui.dialog) ui.dialog.close(); // a click on the backdrop
  });
  ui.detailClose.addEventListener("click", () => ui.dialog.close());

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (_) {
        /* denied: try the old way */
      }
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    ui.dialog.append(area); // inside the modal dialog, or it cannot be selected
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (_) {
      copied = false;
    }
    area.remove();
    return copied;
  }

  ui.copyCaption.addEventListener("click", async () => {
    if (!detail) return;
    const copied = await copyText(captionOf(detail.record));
    ui.copyCaption.textContent = copied ? "Copied" : "Copy caption";
    toast(copied ? "Caption copied" : "Could not copy: select the caption and copy it by hand.");
  });

  ui.deleteStart.addEventListener("click", () => {
    ui.deleteStart.hidden = true;
    ui.deleteConfirm.hidden = false;
    ui.deleteCancel.focus();
  });
  ui.deleteCancel.addEventListener("click", () => {
    hideConfirm();
    ui.deleteStart.focus();
  });
  ui.deleteYes.addEventListener("click", async () => {
    if (!detail) return;
    // The dialog may be closed (detail = null) or show another image by the time the
    // request is answered: keep what this deletion needs, and touch the dialog only if it
    // still shows the deleted image.
    const shown = detail;
    const record = shown.record;
    ui.deleteYes.disabled = true;
    ui.detailError.hidden = true;
    try {
      const response = await fetch(`/images/${encodeURIComponent(String(record.id))}`, {
        method: "DELETE",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) askForKey("Your sign-in has ended. Enter a key to go on.");
      // 404: someone else deleted it already; either way it is gone.
      if (!response.ok && response.status !== 404) throw new Error(await readError(response));
    } catch (error) {
      const message = `Could not delete the image. ${error.message || error}`;
      if (detail && detail === shown) {
        ui.deleteYes.disabled = false;
        ui.detailError.textContent = message;
        ui.detailError.hidden = false;
      } else {
        toast(message);
      }
      return;
    }
    const next = removeCard(record.id);
    if (detail && detail === shown) {
      detail.opener = next;
      ui.dialog.close();
      if (!next) ui.heading.focus();
    }
    toast("Image deleted");
  });

  /* API keys: sign in, what the key allows, sign out ------------------------------------ */

  // The key goes to the server once, in the sign-in form; the server answers with an
  // HttpOnly cookie the scripts cannot read. Nothing is kept in localStorage or sessionStorage.
  const SCOPE_TEXT = {
    read: "can view",
    upload: "can view and upload",
    admin: "can view, upload and delete",
    metrics: "can only scrape /metrics: no images",
  };

  function applySession(state) {
    const allows = new Set(state.allows || []);
    const signedOut = state.required && !state.signed_in;
    ui.signIn.hidden = !signedOut;
    ui.gallerySection.hidden = signedOut;
    ui.uploadSection.hidden = signedOut || !allows.has("upload");
    ui.dangerZone.hidden = !allows.has("admin");
    gallery.canEdit = !signedOut && allows.has("upload");
    ui.searchForm.hidden = signedOut;
    ui.account.hidden = !state.signed_in;
    ui.accountName.textContent = state.signed_in ? state.name : "";
    ui.accountScope.textContent = state.signed_in ? `(${SCOPE_TEXT[state.scope] || state.scope})` : "";
    return !signedOut;
  }

  function clearGallery() {
    gallery.generation += 1;
    gallery.loading = false;
    gallery.next = null;
    gallery.shown.clear();
    ui.grid.replaceChildren();
    if (ui.dialog.open) ui.dialog.close();
    render();
  }

  function askForKey(message) {
    clearGallery();
    applySession({ required: true, signed_in: false, allows: [] });
    ui.signInError.textContent = message || "";
    ui.signInError.hidden = !message;
    ui.signInKey.focus();
  }

  ui.signInForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = ui.signInKey.value.trim();
    if (!key) return;
    const form = new FormData();
    form.append("key", key);
    ui.signInSubmit.disabled = true;
    ui.signInError.hidden = true;
    try {
      const response = await fetch("/session", {
        method: "POST",
        body: form,
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(await readError(response));
      ui.signInKey.value = "";
      applySession(await response.json());
      announce("Signed in");
      reload();
    } catch (error) {
      ui.signInError.textContent = `Could not sign in. ${error.message || error}`;
      ui.signInError.hidden = false;
    } finally {
      ui.signInSubmit.disabled = false;
    }
  });

  ui.signOut.addEventListener("click", async () => {
    let state = { required: true, signed_in: false, allows: [] };
    try {
      const response = await fetch("/session", {
        method: "DELETE",
        headers: { Accept: "application/json" },
      });
      if (response.ok) state = await response.json();
    } catch (_) {
      /* the cookie may outlive a lost answer, but the page forgets the sign-in either way */
    }
    clearGallery();
    if (applySession(state)) reload();
    else ui.signInKey.focus();
    toast("Signed out");
  });

  /* Model state ------------------------------------------------------------------------- */

  // While the model loads, /readyz is asked every few seconds: the banner goes once it is
  // ready, and a load that failed for good reloads the page, which then says why.
  async function watchModel() {
    const banner = document.getElementById("model-banner");
    if (document.body.dataset.modelState !== "loading" || !banner) return;
    try {
      const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (response.ok) {
        banner.remove();
        document.body.dataset.modelState = "ready";
        return;
      }
      if (body.permanent) {
        window.location.reload();
        return;
      }
    } catch (_) {
      /* the server is restarting or unreachable: ask again */
    }
    window.setTimeout(watchModel, 3000);
  }

  /* Start ------------------------------------------------------------------------------- */

  async function start() {
    gallery.query = ui.search.value.trim();
    // A shared link with ?model= opens on that model's captions from the first page on.
    const wanted = new URL(window.location.href).searchParams.get("model");
    if (wanted) ui.modelPick.value = pickOption(wanted).value;
    if (gallery.query) ui.heading.textContent = "Search results";
    render();
    let state = null;
    try {
      const response = await fetch("/session", { headers: { Accept: "application/json" } });
      if (response.ok) state = await response.json();
    } catch (_) {
      state = null; // the images' own answers say what is wrong
    }
    if (state && !applySession(state)) {
      ui.signInKey.focus();
      return;
    }
    loadPage(firstPageUrl());
    loadModels();
  }

  start();
  watchModel();
})();
