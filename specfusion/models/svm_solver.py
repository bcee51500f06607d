"""Exact batched solver of liblinear's L2-regularised squared-hinge linear SVM (``LinearSVC``'s objective).

For every class k of a one-vs-rest problem (targets ``y_ik`` = +1 for class k, -1 otherwise) liblinear
minimises, with the intercept as one more feature of constant value ``intercept_scaling`` whose weight is
regularised like the others::

    f_k(w) = 1/2 ||w||^2 + sum_i C_ik max(0, 1 - y_ik w.x_i)^2        (x_i with the constant appended)

``C_ik`` is C, times the class weight of k for k's own items (liblinear's ``weighted_C`` of the positive
class). This module minimises the same objectives, for all classes at once and for a whole path of C
values, by a **primal Newton method** (Chapelle 2007, "Training a support vector machine in the primal"):
the squared hinge is piecewise quadratic, so Newton steps on the current active set (items with
``y_ik w.x_i < 1``) followed by an exact line search reach the optimum in a few steps. Ingredients:

* **one basis per training set**: the (standardised, intercept-augmented) items are rotated onto the
  eigenvectors of their Gram matrix (``n x n`` when features outnumber items, else ``d x d``). The optimal
  ``w`` lies in the span of the items, so this changes nothing, costs one symmetric eigendecomposition per
  training set shared by every class and every C, and makes the Hessian ``I + 2 Z^T diag(C act) Z``
  diagonal when every item is active, so a Jacobi-preconditioned conjugate-gradient solve of the Newton
  system needs few iterations;
* **all classes as one batch**: the Newton systems of the classes are solved together with matrix
  products (BLAS); converged classes leave the batch;
* **warm starts along the C path** (increasing C).

Everything is float64 NumPy; the result is converted to ``coef_`` / ``intercept_`` on the raw features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Protocol

import numpy as np
import scipy.linalg

from specfusion.errors import ConfigError
from specfusion.identity import arrays_digest
from specfusion.threads import limit_threads, resolve_threads

log = logging.getLogger(__name__)

#: Newton stops when every class's gradient norm is below this fraction of its norm at w = 0.
NEWTON_TOL = 1e-7
#: At most this many Newton steps per C.
NEWTON_MAX_ITER = 100
#: At most this many conjugate-gradient iterations per Newton step.
CG_MAX_ITER = 250
#: Newton steps of a problem with at most this fraction of the items active use a direct (Cholesky) solve.
DIRECT_MAX_FRACTION = 0.5
#: Eigen-directions of the Gram matrix with eigenvalue below this fraction of the largest are dropped.
RANK_RTOL = 1e-12


@dataclasses.dataclass
class Basis:
    """Training items in an orthogonal basis of their span.

    Attributes
    ----------
    mean, scale : ndarray, shape (d,)
        Standardisation (``x -> (x - mean) / scale``); zeros and ones without standardisation.
    intercept_scaling : float
        Value of the constant feature appended to every item.
    V : ndarray, shape (d + 1, r)
        Orthonormal directions; ``Z = X_aug @ V``.
    Z : ndarray, shape (n, r)
        The items' coordinates; ``Z^T Z`` is diagonal (``eigenvalues``).
    eigenvalues : ndarray, shape (r,)
    """

    mean: np.ndarray
    scale: np.ndarray
    intercept_scaling: float
    V: np.ndarray
    Z: np.ndarray
    eigenvalues: np.ndarray
    _gram: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def gram(self) -> np.ndarray:
        """``Z Z^T`` (n, n), the items' dot products (made on first use)."""
        if self._gram is None:
            self._gram = self.Z @ self.Z.T
        return self._gram

    def linear_model(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(coef, intercept) on the raw features, shapes (K, d) and (K,), of basis weights ``W`` (r, K)."""
        w_aug = self.V @ W  # (d + 1, K)
        coef = w_aug[:-1] / self.scale[:, None]
        intercept = w_aug[-1] * self.intercept_scaling - self.mean @ coef
        return np.ascontiguousarray(coef.T), intercept


def make_basis(X: np.ndarray, *, mean=None, scale=None, intercept_scaling: float = 1.0) -> Basis:
    """Standardise ``X`` (n, d) with ``mean`` / ``scale``, append the constant, rotate onto the Gram eigenvectors."""
    n, d = X.shape
    mean = np.zeros(d) if mean is None else np.asarray(mean, dtype=np.float64)
    scale = np.ones(d) if scale is None else np.asarray(scale, dtype=np.float64)
    Xa = np.empty((n, d + 1))
    np.subtract(X, mean, out=Xa[:, :d])
    Xa[:, :d] /= scale
    Xa[:, d] = intercept_scaling
    if n <= d + 1:  # the n x n Gram (kernel) form
        lam, U = scipy.linalg.eigh(Xa @ Xa.T, overwrite_a=True, check_finite=False)
        keep = lam > RANK_RTOL * max(lam[-1], 1e-300)
        lam, U = lam[keep], U[:, keep]
        Z = U * np.sqrt(lam)
        V = Xa.T @ (U / np.sqrt(lam))
    else:  # the (d + 1) x (d + 1) covariance form
        lam, V = scipy.linalg.eigh(Xa.T @ Xa, overwrite_a=True, check_finite=False)
        keep = lam > RANK_RTOL * max(lam[-1], 1e-300)
        lam, V = lam[keep], np.ascontiguousarray(V[:, keep])
        Z = Xa @ V
    return Basis(mean=mean, scale=scale, intercept_scaling=float(intercept_scaling), V=V, Z=Z, eigenvalues=lam)


def ovr_targets(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """One-vs-rest targets: (n, K) of +1 / -1; a single column for two classes (+1 = class 1, as liblinear)."""
    Y = -np.ones((len(codes), n_classes))
    Y[np.arange(len(codes)), codes] = 1.0
    return Y[:, 1:] if n_classes == 2 else Y


def cost_matrix(Y: np.ndarray, C: float, class_weight: np.ndarray | None = None) -> np.ndarray:
    """Per-item, per-problem C (n, K), as liblinear weights it.

    One-vs-rest (K > 2 classes): ``C * class_weight[k]`` on class k's own items, ``C`` on the others.
    Two classes (one problem): ``C * class_weight[1]`` on class 1's items, ``C * class_weight[0]`` on class 0's.
    """
    Cm = np.full(Y.shape, float(C))
    if class_weight is not None:
        cw = np.asarray(class_weight, dtype=np.float64)
        if Y.shape[1] == 1 and len(cw) == 2:
            return np.where(Y > 0, C * cw[1], C * cw[0])
        Cm = np.where(Y > 0, Cm * cw[None, :], Cm)
    return Cm


@dataclasses.dataclass
class NewtonInfo:
    """Work done by :func:`solve`: Newton steps, CG iterations, and problems that did not converge."""

    newton_steps: int = 0
    cg_iterations: int = 0
    direct_solves: int = 0
    not_converged: int = 0


def objective(Z: np.ndarray, Y: np.ndarray, Cm: np.ndarray, W: np.ndarray) -> np.ndarray:
    """liblinear's primal objective of every problem (K,) at basis weights ``W`` (r, K)."""
    slack = np.maximum(0.0, 1.0 - Y * (Z @ W))
    return 0.5 * np.einsum("rk,rk->k", W, W) + np.einsum("nk,nk->k", Cm, slack**2)


def solve(basis: Basis, Y: np.ndarray, Cm: np.ndarray, W0: np.ndarray | None = None, *, tol: float = NEWTON_TOL,
          max_iter: int = NEWTON_MAX_ITER, info: NewtonInfo | None = None) -> np.ndarray:  # fmt: skip
    """Minimise the squared-hinge objectives of all problems (columns of ``Y``) by primal Newton.

    Parameters
    ----------
    basis : Basis
        The training items in an orthogonal basis (:func:`make_basis`).
    Y : ndarray, shape (n, K)
        Targets +1 / -1.
    Cm : ndarray, shape (n, K)
        Per-item C (:func:`cost_matrix`).
    W0 : ndarray, shape (r, K), optional
        Starting point (warm start); zeros by default.
    tol : float
        Stop a problem when its gradient norm is below ``tol`` times its norm at zero.
    max_iter : int
        Newton steps at most.
    info : NewtonInfo, optional
        Counters to add to.

    Returns
    -------
    W : ndarray, shape (r, K)
    """
    info = info if info is not None else NewtonInfo()
    Z = basis.Z
    n, r = Z.shape
    K = Y.shape[1]
    W = np.zeros((r, K)) if W0 is None else np.array(W0, dtype=np.float64)
    Z2T = np.ascontiguousarray((Z * Z).T)  # (r, n): Jacobi preconditioner = 1 + 2 Z2^T (C act)
    C2 = 2.0 * Cm
    g0 = np.linalg.norm(Z.T @ (C2 * Y), axis=0)  # gradient norm at w = 0
    F = Z @ W
    todo = np.arange(K)
    for _ in range(max_iter):
        Fs, Ys, Cs, Ws = F[:, todo], Y[:, todo], C2[:, todo], W[:, todo]
        act = Ys * Fs < 1.0
        Ca = Cs * act
        G = Ws + Z.T @ (Ca * (Fs - Ys))
        gnorm = np.linalg.norm(G, axis=0)
        done = gnorm <= tol * np.maximum(g0[todo], 1e-300)
        if done.all():
            todo = todo[:0]
            break
        keep = ~done
        todo, Fs, Ys, Cs, Ca, Ws, G, gnorm, act = (a[..., keep] for a in (todo, Fs, Ys, Cs, Ca, Ws, G, gnorm, act))
        info.newton_steps += 1
        D = np.empty_like(G)
        n_active = act.sum(axis=0)
        direct = (n_active <= DIRECT_MAX_FRACTION * n) & (n_active < r)
        if direct.any():
            # few active items: the Newton point is w = Z_A^T beta, (Z_A Z_A^T + diag(1 / 2C)) beta = y_A
            gram = basis.gram
            for j in np.flatnonzero(direct):
                D[:, j] = _newton_point(Z, gram, act[:, j], Ys[:, j], Cs[:, j]) - Ws[:, j]
            info.direct_solves += int(direct.sum())
        if (~direct).any():
            # many active items: (I + Z^T diag(Ca) Z) D = -G by Jacobi-preconditioned CG, superlinear forcing term
            cg = np.flatnonzero(~direct)
            forcing = np.minimum(0.1, np.sqrt(gnorm[cg] / g0[todo[cg]])) * gnorm[cg]
            D[:, cg] = _pcg(Z, Ca[:, cg], 1.0 + Z2T @ Ca[:, cg], -G[:, cg], forcing, info)
        A = Z @ D
        t = _line_search(Fs, Ys, Cs, Ws, D, A)
        log.debug("Newton step: %d problems (%d direct), active %d..%d, step %.3g..%.3g",
                  len(todo), int(direct.sum()), n_active.min(), n_active.max(), t.min(), t.max())  # fmt: skip
        W[:, todo] = Ws + t * D
        F[:, todo] = Fs + t * A
    if todo.size:
        info.not_converged += int(todo.size)
    return W


def _newton_point(Z, gram, active, y, c2) -> np.ndarray:
    """Minimiser of 1/2 ||w||^2 + sum over active items of C_i (y_i - z_i.w)^2 (basis weights, (r,))."""
    idx = np.flatnonzero(active)
    M = gram.take(idx, axis=0).take(idx, axis=1)
    M.flat[:: len(idx) + 1] += 1.0 / c2[idx]
    L = np.linalg.cholesky(M)  # numpy's LAPACK calls release the GIL (folds may run in threads)
    beta = scipy.linalg.solve_triangular(L, y[idx], lower=True, check_finite=False)
    beta = scipy.linalg.solve_triangular(L, beta, lower=True, trans="T", check_finite=False)
    return beta @ Z.take(idx, axis=0)


def _pcg(Z, Ca, diag, B, stop, info: NewtonInfo) -> np.ndarray:
    """Solve ``(I + Z^T diag(Ca_k) Z) x_k = b_k`` for every column k; stop column k at residual ``stop[k]``."""
    X = np.zeros_like(B)
    R = B.copy()
    P_inv = 1.0 / diag
    S = P_inv * R
    P = S.copy()
    rz = np.einsum("rk,rk->k", R, S)
    active = np.ones(B.shape[1], dtype=bool)
    for _ in range(CG_MAX_ITER):
        cols = np.flatnonzero(active)
        if cols.size == 0:
            break
        info.cg_iterations += 1
        Pc = P[:, cols]
        HP = Pc + Z.T @ (Ca[:, cols] * (Z @ Pc))
        alpha = rz[cols] / np.einsum("rk,rk->k", Pc, HP)
        X[:, cols] += alpha * Pc
        R[:, cols] -= alpha * HP
        rnorm = np.linalg.norm(R[:, cols], axis=0)
        finished = rnorm <= stop[cols]
        S_c = P_inv[:, cols] * R[:, cols]
        rz_new = np.einsum("rk,rk->k", R[:, cols], S_c)
        beta = rz_new / rz[cols]
        rz[cols] = rz_new
        P[:, cols] = S_c + beta * Pc
        active[cols[finished]] = False
    return X


def _line_search(F, Y, C2, W, D, A, max_iter: int = 50) -> np.ndarray:
    """Exact minimiser t >= 0 (per column) of the objective along ``W + t D`` (piecewise quadratic).

    ``F = Z W`` and ``A = Z D``. Safeguarded Newton on the derivative, which is piecewise linear and
    increasing: when the active set at the new point equals the one used for the step, it is exact.
    """
    WD = np.einsum("rk,rk->k", W, D)
    DD = np.einsum("rk,rk->k", D, D)
    K = F.shape[1]
    t = np.ones(K)
    lo, hi = np.zeros(K), np.full(K, np.inf)
    todo = np.ones(K, dtype=bool)
    for _ in range(max_iter):
        Ft = F + t * A
        act = Y * Ft < 1.0
        CA = C2 * act * A
        d1 = WD + t * DD + np.einsum("nk,nk->k", CA, Ft - Y)
        d2 = DD + np.einsum("nk,nk->k", CA, A)
        t_new = t - d1 / d2
        lo = np.where(d1 < 0, t, lo)
        hi = np.where(d1 > 0, t, hi)
        act_new = Y * (F + t_new * A) < 1.0
        exact = (act_new == act).all(axis=0) | (d1 == 0)
        outside = (t_new <= lo) | (t_new >= hi)
        t_new = np.where(outside, np.where(np.isinf(hi), 2 * np.maximum(lo, t), 0.5 * (lo + hi)), t_new)
        t = np.where(todo, t_new, t)
        todo &= ~(exact & ~outside)
        if not todo.any():
            break
    return t


@dataclasses.dataclass
class PathResult:
    """Basis weights per C of a path (list of (r, K) arrays) and the work done."""

    weights: list[np.ndarray]
    info: NewtonInfo


def solve_path(basis: Basis, codes: np.ndarray, n_classes: int, Cs, *, class_weight=None, tol: float = NEWTON_TOL,
               max_iter: int = NEWTON_MAX_ITER) -> PathResult:  # fmt: skip
    """Solve the one-vs-rest problems for every C in ``Cs`` (ascending), each warm-started from the previous.

    ``codes`` are class indices 0..n_classes-1 of the basis' items; ``class_weight`` (n_classes,) or None.
    """
    Y = ovr_targets(codes, n_classes)
    weights_k = None if class_weight is None else np.asarray(class_weight, dtype=np.float64)
    info = NewtonInfo()
    W = None
    out = []
    for C in Cs:
        W = solve(basis, Y, cost_matrix(Y, C, weights_k), W, tol=tol, max_iter=max_iter, info=info)
        out.append(W.copy())
    return PathResult(weights=out, info=info)


def standardisation(X: np.ndarray, standardize: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mean, scale) of :class:`~sklearn.preprocessing.StandardScaler` fitted on ``X``, or (None, None)."""
    if not standardize:
        return None, None
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    return scaler.mean_, scaler.scale_


def linear_models_path(X: np.ndarray, codes: np.ndarray, Cs, *, standardize: bool = True, class_weight=None,
                       tol: float = NEWTON_TOL, max_iter: int = NEWTON_MAX_ITER):  # fmt: skip
    """Standardisation + one-vs-rest squared-hinge SVMs for every C of ``Cs`` (ascending), on raw features.

    Parameters
    ----------
    X : ndarray, shape (n, d)
    codes : ndarray of int, shape (n,)
        Class indices 0..K-1 (every index present; K >= 2).
    Cs : sequence of float
        Ascending C values; each fit is warm-started from the previous one.
    standardize : bool
        Standardise with the training items' mean and standard deviation (as ``StandardScaler``).
    class_weight : ndarray, shape (K,), optional
        liblinear's per-class C factors.

    Returns
    -------
    models : list of (coef, intercept)
        Shapes (K, d) and (K,) -- (1, d) and (1,) for two classes, the score of class 1 -- per C.
    info : NewtonInfo
    """
    mean, scale = standardisation(X, standardize)
    basis = make_basis(X, mean=mean, scale=scale)
    path = solve_path(basis, codes, int(codes.max()) + 1, Cs, class_weight=class_weight, tol=tol, max_iter=max_iter)
    return [basis.linear_model(W) for W in path.weights], path.info


# -- the C search and the refit of LinearSVM(solver="newton") ---------------------------------------------

#: A progress callback: called with a short description (``"C search, split 2/4"``, ``"refit"``) after a fit.
Progress = Callable[[str], None]


class FitBackend(Protocol):
    """Where :class:`~specfusion.models.svm.LinearSVM` runs its independent fits instead of this process.

    Passed explicitly: ``LinearSVM.fit(X, y, folds, backend=...)`` and the protocols above it
    (:func:`~specfusion.models.svm_protocol.svm_fold_protocol`, ``fuse(..., backend=...)``). The fits are
    the same as in this process, so are the results. :class:`specfusion.distributed.svm.DaskFits` runs
    them as Dask tasks.
    """

    def map(self, func: Callable, shared: tuple, calls: Sequence[tuple], *,
            on_done: Callable[[int], None] | None = None) -> list:  # fmt: skip
        """``[func(*shared, *args) for args in calls]`` in that order, each call with one BLAS thread.

        ``on_done(i)``, when given, is called in this process as call ``i`` finishes.
        """

    def parallel_config(self) -> contextlib.AbstractContextManager:
        """A ``joblib.parallel_config`` under which joblib's ``Parallel`` runs on the same workers.

        Entered around the fits that go through joblib: liblinear's grid search and the out-of-fold refits.
        """


def joblib_backend(backend: FitBackend | None) -> contextlib.AbstractContextManager:
    """``backend.parallel_config()``, or a context that changes nothing when ``backend`` is None."""
    return contextlib.nullcontext() if backend is None else backend.parallel_config()


def _tick(progress: Progress | None, description: str) -> None:
    if progress is not None:
        progress(description)


def fingerprint(X: np.ndarray, codes: np.ndarray, folds) -> str:
    """Digest of a search's data, so that its out-of-fold decisions are reused only for the same data."""
    return arrays_digest(X, codes, np.asarray(folds if folds is not None else []), digest_size=16)


def _workers(estimator) -> int | None:
    return None if estimator.n_jobs is None else resolve_threads(estimator.n_jobs)


def _trained_problem(estimator, codes: np.ndarray):
    """(trained class indices, local codes 0..K_t-1, class weights or None) of training labels ``codes``."""
    trained = np.unique(codes)
    if len(trained) < 2:
        raise ConfigError(f"a training set of the SVM holds only one class ({trained.tolist()})")
    weights = None
    if estimator.class_weight is not None:
        from sklearn.utils.class_weight import compute_class_weight

        weights = compute_class_weight(estimator.class_weight, classes=trained, y=codes)
    return trained, np.searchsorted(trained, codes), weights


def full_decisions(
    coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, trained: np.ndarray, n_classes: int
) -> np.ndarray:
    """Decision values (n, n_classes) as :meth:`LinearSVM.decision_function` gives them (untrained classes lowest)."""
    return class_decisions(X @ coef.T + intercept, trained, n_classes)


def class_decisions(raw: np.ndarray, trained: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision values (n, n_classes) of a linear model's ``raw`` scores over the classes ``trained``.

    ``raw``: (n, K_t), or (n,) / (n, 1) for two trained classes, liblinear's score of ``trained[1]``,
    which becomes the columns (-score, score). Classes without training items get a value below every
    other class of the item.
    """
    if raw.ndim == 1 or raw.shape[1] == 1:
        score = raw.reshape(len(raw))
        raw = np.column_stack([-score, score])
    if len(trained) == n_classes:
        return raw
    out = np.repeat(raw.min(axis=1, keepdims=True) - 1.0, n_classes, axis=1)
    out[:, trained] = raw
    return out


def _score(metric: str, truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    if metric == "accuracy":
        return float(np.mean(truth == predicted))
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro", labels=np.arange(n_classes), zero_division=0))


def _fold(estimator, X, codes, train, test, grid, n_classes):
    """One training/validation split over the whole grid: (scores per C, decisions per C, not converged)."""
    trained, local, weights = _trained_problem(estimator, codes[train])
    models, info = linear_models_path(X[train], local, grid, standardize=estimator.standardize, class_weight=weights)
    decisions = [full_decisions(coef, b, X[test], trained, n_classes) for coef, b in models]
    scores = [_score(estimator.metric, codes[test], d.argmax(axis=1), n_classes) for d in decisions]
    return scores, decisions, info.not_converged


def _split(estimator, X, codes, grid, n_classes, train, test):
    """:func:`_fold` with the shared arguments first (a call of :meth:`FitBackend.map`)."""
    return _fold(estimator, X, codes, train, test, grid, n_classes)


def newton_search(estimator, X: np.ndarray, codes: np.ndarray, grid: np.ndarray, splitter, *,
                  backend: FitBackend | None = None, progress: Progress | None = None) -> dict:  # fmt: skip
    """The C search of ``LinearSVM(solver="newton")``: ``GridSearchCV.cv_results_``-like dict.

    Besides the ``cv_results_`` keys (``param_svc__C``, ``mean_test_score``, ``std_test_score``,
    ``rank_test_score``, ``split<k>_test_score``) it holds ``n_not_converged`` and ``oof_decisions``
    (n_C, n, n_classes): every item's decision values from the fold model that held it out (NaN for
    items no split validates on).

    ``backend``: where the splits run (:class:`FitBackend`, one call per split); None: here, in
    ``estimator.n_jobs`` threads. ``progress`` is called after every split.
    """
    n_classes = len(estimator.classes_)
    splits = list(splitter.split(X, codes))
    outcomes = _run_splits(estimator, X, codes, grid, n_classes, splits, backend, progress)
    scores = np.array([o[0] for o in outcomes])  # (splits, C)
    oof = np.full((len(grid), len(X), n_classes), np.nan)
    for (_, test), (_, decisions, _) in zip(splits, outcomes):
        for i, d in enumerate(decisions):
            oof[i, test] = d
    from scipy.stats import rankdata

    mean = scores.mean(axis=0)
    results = {
        "param_svc__C": np.asarray(grid, dtype=float),
        "mean_test_score": mean,
        "std_test_score": scores.std(axis=0),
        "rank_test_score": rankdata(-mean, method="min").astype(np.int32),
        **{f"split{k}_test_score": scores[k] for k in range(len(splits))},
        "n_not_converged": int(sum(o[2] for o in outcomes)),
        "oof_decisions": oof,
    }
    return results


def _run_splits(estimator, X, codes, grid, n_classes, splits, backend, progress) -> list:
    """:func:`_fold` of every split, in split order: on ``backend``, in threads, or one after the other."""

    def done(k: int) -> None:
        _tick(progress, f"C search, split {k + 1}/{len(splits)}")

    workers = _workers(estimator)
    if backend is not None:  # one call per split: the fits of the whole C path on that split's training items
        shared = (estimator, X, codes, grid, n_classes)
        return backend.map(_split, shared, [(tr, te) for tr, te in splits], on_done=done)
    outcomes: list = [None] * len(splits)
    if workers is not None and workers > 1 and len(splits) > 1:
        # folds in parallel threads with one BLAS thread each: one thread per core in all
        with limit_threads(1), ThreadPoolExecutor(max_workers=min(workers, len(splits))) as pool:
            futures = {
                pool.submit(_fold, estimator, X, codes, tr, te, grid, n_classes): k for k, (tr, te) in enumerate(splits)
            }
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
                done(futures[future])
    else:
        with limit_threads(workers):
            for k, (tr, te) in enumerate(splits):
                outcomes[k] = _fold(estimator, X, codes, tr, te, grid, n_classes)
                done(k)
    return outcomes


def newton_refit(estimator, X: np.ndarray, codes: np.ndarray, C: float, *, backend: FitBackend | None = None,
                 progress: Progress | None = None):  # fmt: skip
    """(Pipeline with one fitted ``LinearSVC`` holding the standardisation in its weights, problems not converged).

    The path runs over the estimator's grid values below ``C`` (warm starts), then ``C``; on ``backend``
    (one call) when given, else here. ``progress`` is called once the fit is done.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    if backend is not None:
        (fitted,) = backend.map(_refit_model, (estimator, X, codes), [(C,)])
    else:
        # one BLAS thread: two OpenBLAS threads on a loaded 2-core machine made this fit 12x slower
        # (docs/performance.md)
        with limit_threads(None if _workers(estimator) is None else 1):
            fitted = _refit_model(estimator, X, codes, C)
    _tick(progress, "refit")
    coef, intercept, trained, newton_steps, not_converged = fitted
    svc = LinearSVC(C=C, class_weight=estimator.class_weight)
    svc.coef_, svc.intercept_, svc.classes_ = coef, intercept, trained
    svc.n_features_in_, svc.n_iter_ = X.shape[1], newton_steps
    return Pipeline([("svc", svc)]), not_converged


def _refit_model(estimator, X: np.ndarray, codes: np.ndarray, C: float) -> tuple:
    """(coef, intercept, trained classes, Newton steps, problems not converged) of the refit at ``C``."""
    grid = estimator.grid()
    path = [float(c) for c in grid if c < C] + [float(C)]
    trained, local, weights = _trained_problem(estimator, codes)
    models, info = linear_models_path(X, local, path, standardize=estimator.standardize, class_weight=weights)
    coef, intercept = models[-1]
    return coef, intercept, trained, info.newton_steps, info.not_converged
