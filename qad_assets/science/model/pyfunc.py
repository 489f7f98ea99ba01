"""The VAE as an MLflow pyfunc, logged *as code* (MLflow "models from code"): nothing is pickled.

``predict`` takes an array ``(N, 2, P)`` of rest-frame (flux, ivar) and returns ``(N, 3)``: reduced
χ², KL term and best-fit amplitude. The weights are the safetensors/JSON directory written by
``package.save_model`` (artifact ``model_dir``), loaded with ``weights_only`` semantics.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from qad_assets.science.model.package import load_model
from qad_assets.science.model.vae import reconstruct


class VaePyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.config, self.grid_info = load_model(context.artifacts["model_dir"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        spectra = np.asarray(model_input, dtype=np.float32)
        rec = reconstruct(self.model, spectra[:, 0], spectra[:, 1])
        return np.stack([rec.reduced_chi2, rec.kl, rec.amplitude], axis=1).astype(np.float64)


mlflow.models.set_model(VaePyfunc())
