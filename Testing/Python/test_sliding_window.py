"""The engine's own sliding window against MONAI's ``sliding_window_inference``, which it replaces
(to spare the command MONAI's import): the same windows, padding, blending and result."""

import pytest
import torch

from DuPLUSLib.sliding_window import sliding_window, window_count

monai_inferers = pytest.importorskip("monai.inferers")
monai_data_utils = pytest.importorskip("monai.data.utils")


def predictor(calls: list[int]):
    """A window -> two channels that depend on where each voxel sits in the window, so a wrong
    window placement or weighting changes the blend."""
    def predict(windows: torch.Tensor) -> torch.Tensor:
        calls.append(windows.shape[0])
        ramp = torch.linspace(0, 1, windows.shape[-1])
        return torch.cat([torch.sigmoid(windows * 0.01 + ramp), torch.tanh(windows * 0.02) ** 2], dim=1)
    return predict


@pytest.mark.parametrize("shape", [(70, 61, 53), (20, 61, 30), (48, 48, 48), (49, 100, 12)])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_the_same_blend_as_monai(shape, overlap):
    generator = torch.Generator().manual_seed(sum(shape))
    image = torch.randn((1, 1, *shape), generator=generator) * 100
    roi, batch, pad_value = (32, 32, 32), 3, float(image.min())
    ours_calls, monai_calls = [], []
    ours = sliding_window(image, roi, batch, predictor(ours_calls), overlap, pad_value)
    expected = monai_inferers.sliding_window_inference(
        image, roi_size=roi, sw_batch_size=batch, predictor=predictor(monai_calls), overlap=overlap,
        mode="gaussian", padding_mode="constant", cval=pad_value)
    assert ours.shape == expected.shape == (1, 2, *shape)
    torch.testing.assert_close(ours, expected.as_tensor() if hasattr(expected, "as_tensor") else expected,
                               rtol=1e-5, atol=1e-6)
    assert ours_calls == monai_calls
    padded = [max(s, r) for s, r in zip(shape, roi)]
    scan = [r if r == s else int(r * (1 - overlap)) or 1 for s, r in zip(padded, roi)]
    assert window_count(shape, roi, overlap) == len(monai_data_utils.dense_patch_slices(padded, roi, scan)) == sum(ours_calls)


def test_segment_does_not_import_monai(tmp_path):
    """The point of this module: ``duplus segment`` runs without loading MONAI."""
    import subprocess
    import sys

    from DuPLUSLib.samples import sample_volume_path

    code = ("import sys; from DuPLUSLib.cli import main; "
            f"rc = main(['segment', {str(sample_volume_path())!r}, '-p', 'CT/abdomen/liver', '-o', "
            f"{str(tmp_path / 'out.seg.nrrd')!r}, '--progress', 'none', '--device', 'cpu']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'monai'})); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
