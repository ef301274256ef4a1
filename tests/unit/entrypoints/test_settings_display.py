"""Printing settings never shows the database password."""

from __future__ import annotations

from captioner.config import Settings, without_password


def test_a_database_password_is_masked_when_settings_are_printed() -> None:
    assert (
        without_password("postgresql://cap:s3cret@db:5432/cap")
        == "postgresql://cap:***@db:5432/cap"
    )


def test_urls_without_a_password_are_printed_as_they_are() -> None:
    assert without_password("postgresql://cap@db/cap") == "postgresql://cap@db/cap"
    assert without_password("") == ""


def test_captioner_config_shows_the_database_url_without_its_password() -> None:
    settings = Settings(database_url="postgresql://cap:s3cret@db/cap")

    assert settings.for_display()["database_url"] == "postgresql://cap:***@db/cap"
