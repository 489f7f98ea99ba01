"""The label database for the assets: ``LabelStore`` (``qad_assets.labels.store``) as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from qad_assets.labels.store import LabelStore


class LabelStoreResource(dg.ConfigurableResource):
    """Astronomers' labels: ``url`` (``QAD_LABELS_DB``, an SQLAlchemy URL), else the SQLite database under
    ``<storage_root>/labels`` that ``qad explore`` writes.
    """

    storage_root: str
    url: str = ""

    def store(self) -> LabelStore:
        return LabelStore.for_storage(self.storage_root, self.url or None)

    def current(self, release: str) -> dict[int, str]:
        """TARGETID → current label of every labelled candidate of ``release``."""
        store = self.store()
        try:
            return {event.targetid: event.label for event in store.current(release)}
        finally:
            store.close()
