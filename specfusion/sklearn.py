"""scikit-learn transformer from audio to embeddings, so audio -> features -> SVM is one Pipeline.

>>> from sklearn.pipeline import make_pipeline                                  # doctest: +SKIP
>>> from specfusion.models.svm import LinearSVM                                 # doctest: +SKIP
>>> model = make_pipeline(EmbeddingTransformer("aisfx", sample_rate=16000),      # doctest: +SKIP
...                       LinearSVM(c_grid=[1e-3, 1e-2]))
>>> cross_val_predict(model, waveforms, labels, cv=4)                            # doctest: +SKIP

:class:`EmbeddingTransformer` only stores its parameters in ``__init__`` (scikit-learn's rule), so it
can be cloned, grid-searched and pickled; the extractor (its network and weights) is built on the
first :meth:`~EmbeddingTransformer.fit` or :meth:`~EmbeddingTransformer.transform` and is not pickled
(it is rebuilt when needed). The transformer learns nothing from the data: ``fit`` only builds the
network, so it is stateless in scikit-learn's sense.

Every clone builds its own network and embeds its inputs again: cross-validation embeds every clip
once per split. Give the pipeline a ``memory=`` folder (``make_pipeline(..., memory=path)``) to reuse
the training embeddings across a grid search's candidates, or extract once into a feature store
(``specfusion extract``) for large data.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError

from specfusion.errors import ConfigError


class EmbeddingTransformer(TransformerMixin, BaseEstimator):
    """Waveforms -> clip embeddings of any registered extractor.

    Parameters
    ----------
    extractor : str
        Registered extractor name (:func:`~specfusion.features.extractors.available_extractors`), e.g.
        ``"aisfx"``, ``"efficientnet_lite0"``, ``"panns_cnn14"``.
    sample_rate : int, optional
        Rate (Hz) of the waveforms in ``X``; each is resampled with soxr to the extractor's rate. None:
        every item of ``X`` is a ``(waveform, rate)`` pair, or the waveforms already have the
        extractor's rate.
    options : dict, optional
        Keyword options of the extractor (e.g. ``{"weights": "none", "device": "cpu"}``).
    batch_size : int
        Clips per network call (memory only; does not change the output).

    Attributes
    ----------
    extractor_ : Extractor
        The built extractor (after :meth:`fit` or the first :meth:`transform`; not pickled).
    n_features_out_ : int
        Embedding length.
    """

    _parameter_constraints: dict = {
        "extractor": [str],
        "sample_rate": [Interval(Real, 0, None, closed="neither"), None],
        "options": [dict, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        extractor: str = "aisfx",
        *,
        sample_rate: int | None = None,
        options: dict | None = None,
        batch_size: int = 8,
    ):
        self.extractor = extractor
        self.sample_rate = sample_rate
        self.options = options
        self.batch_size = batch_size

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # nothing is learnt from data; the network is built on first use
        tags.input_tags.two_d_array = False
        tags.input_tags.string = False
        return tags

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("extractor_", None)  # the network is rebuilt from the parameters when needed
        return state

    # -- building ------------------------------------------------------------------------------------
    def _build(self):
        """The extractor, built once per instance (and after unpickling)."""
        if getattr(self, "extractor_", None) is None:
            try:
                self._validate_params()
            except InvalidParameterError as err:
                raise ConfigError(str(err)) from None
            from specfusion.features.extractors import get_extractor

            self.extractor_ = get_extractor(self.extractor, **(self.options or {}))
            self.n_features_out_ = int(self.extractor_.dim)
        return self.extractor_

    def _items(self, X) -> list[tuple[np.ndarray, int]]:
        """``X`` as (waveform, rate) pairs."""
        default_sr = self.extractor_.sample_rate if self.sample_rate is None else self.sample_rate
        if isinstance(X, np.ndarray) and X.dtype != object:
            if X.ndim != 2:
                raise ConfigError(f"X must be a list of waveforms or a 2-D array (clips, samples), got shape {X.shape}")
            return [(row, default_sr) for row in X]
        items = []
        for i, item in enumerate(X):
            if isinstance(item, tuple) and len(item) == 2 and np.isscalar(item[1]):
                if self.sample_rate is not None:
                    raise ConfigError(
                        f"item {i} is a (waveform, rate) pair but sample_rate={self.sample_rate} is set too"
                    )
                items.append((np.asarray(item[0]), item[1]))
            else:
                items.append((np.asarray(item), default_sr))
        return items

    # -- estimator API -------------------------------------------------------------------------------
    def fit(self, X=None, y=None):
        """Build the extractor (loads its weights); learns nothing from ``X``.

        Returns
        -------
        self
        """
        self._build()
        return self

    def transform(self, X) -> np.ndarray:
        """Embeddings of the clips in ``X``.

        Parameters
        ----------
        X : list of array-like, list of (array-like, int), or ndarray of shape (n, samples)
            Mono waveforms (at ``sample_rate``), or (waveform, rate) pairs when ``sample_rate`` is None.

        Returns
        -------
        ndarray, shape (n, n_features_out_), float32
        """
        from specfusion.features.extraction import embed_grouped

        extractor = self._build()
        items = self._items(X)
        out = np.zeros((len(items), int(extractor.dim)), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            prepared = [(start + j, extractor.prepare_audio(y, sr)) for j, (y, sr) in enumerate(chunk)]
            rows, features = embed_grouped(extractor, prepared)
            out[rows] = features
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``<extractor>0 ... <extractor>{dim-1}``."""
        extractor = self._build()
        return np.asarray([f"{self.extractor}{i}" for i in range(int(extractor.dim))], dtype=object)
