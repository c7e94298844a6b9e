"""A golden file made from one sample of a data set (``edgeship release --golden-from``).

A GOLDEN.npz needs the model's input and the output it must give; a new user has an eval
set but no such file. This takes the first sample of DATA.npz (the eval set of ``convert
--eval``, say: keys are the model's input names, extra keys such as ``label`` are
ignored), runs the artifact on it here and writes input + output as GOLDEN.npz for
:meth:`Release.build`, which then derives the tolerance from the artifact as for any
golden file without ``atol``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from edgeship._errors import EdgeshipError, InputError


def write_golden_from(data_path: Path, artifact: Path, golden_path: Path) -> None:
    """Write ``golden_path`` from the first sample of ``data_path`` run through ``artifact``."""
    import numpy as np
    from edgeship.sdk.runtime._model import Model

    try:
        with np.load(data_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"--golden-from {data_path}: not a readable .npz ({exc})") from exc
    try:
        model = Model.load(artifact)
    except EdgeshipError as exc:
        raise InputError(f"--golden-from: cannot run {artifact.name} here ({exc}); give a "
                         "GOLDEN.npz with --golden instead") from exc
    names = [spec.name for spec in model.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"--golden-from {data_path}: no array for input(s) {missing} of "
                         f"{artifact.name} (keys: {sorted(arrays)})")
    sample = {n: arrays[n][:1] for n in names}
    if any(a.shape[0] < 1 for a in sample.values()):
        raise InputError(f"--golden-from {data_path}: holds no samples")
    try:
        output = model.predict_all(sample)[model.outputs[0].name]
    except EdgeshipError as exc:
        raise InputError(f"--golden-from {data_path}: {artifact.name} cannot run its first "
                         f"sample ({exc})") from exc
    np.savez(golden_path, **sample, output=output)
