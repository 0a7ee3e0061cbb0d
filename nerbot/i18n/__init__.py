"""User-facing text: zh/en message catalogs and the spec's SAS emoji table."""

from nerbot.i18n.catalog import LANGUAGES, Catalog, Language, Voice

__all__ = ["LANGUAGES", "Catalog", "Language", "Voice"]
