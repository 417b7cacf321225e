"""One verdict per take (ok / flagged / not aligned), with its reasons, for every view."""

from afp_core.protocols.sessions import judge_take
from rig_app.align import Alignment
from rig_app.jobs import describe_alignment
from rig_app.session import TakeEntry


def test_verdict_names_every_reason_and_only_when_flagged():
    assert judge_take(True, {"ok": True, "notes": ["weak marker at 3 s"]}, 0).describe() == "ok"
    assert judge_take(False, None, 0).describe() == "not aligned"
    assert judge_take(True, None, 4).describe() == "not aligned"  # no summary: never aligned
    failed = judge_take(True, {"ok": False, "notes": ["marker 2 dropped"]}, 2)
    assert not failed.trusted
    assert failed.describe() == (
        "flagged: marker 2 dropped; 2 buffer under/overruns while recording (audio lost or "
        "repeated)"
    )
    assert judge_take(True, {"ok": False}, 0).reasons == ("the alignment failed its checks",)
    lost = judge_take(True, {"ok": True}, 1)
    assert lost.status == "flagged" and lost.reasons[0].startswith("1 buffer under/overruns")


def test_rig_views_use_the_same_verdict():
    alignment = Alignment(
        method="markers",
        recording_rate=48000,
        program_rate=8000,
        program_samples=80000,
        take_samples=480000,
        offset_s=0.012,
        drift_ppm=185.0,
        anchors=[],
        songs=[],
        rms_residual_ms=0.1,
        max_residual_ms=0.2,
        min_snr_db=30.0,
        ok=True,
    ).to_dict()
    take = TakeEntry("mid", "takes/mid.wav", 48000, aligned_file="takes/mid.aligned.wav")
    take.alignment = alignment
    assert take.verdict.describe() == "ok"
    # a large drift is information, not a flag: only failed checks and lost audio flag
    assert describe_alignment(alignment).endswith(
        "drift +185.0 ppm, max residual 0.200 ms, min SNR 30.0 dB: ok"
    )
    take.xruns = 3
    assert take.verdict.status == "flagged"
    assert describe_alignment(alignment, take.xruns).endswith(
        ": flagged: 3 buffer under/overruns while recording (audio lost or repeated)"
    )
