"""One verdict per take (ok / flagged / not aligned), with its reasons, for every view."""

from afp_core.protocols.sessions import describe_xruns, judge_take
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


def test_xruns_say_how_many_and_where():
    assert describe_xruns(0) == "0 xruns"
    assert describe_xruns(1, [3.04]) == "1 xrun at 3.0 s"
    assert describe_xruns(3, [12.4, 80.1, 80.2]) == "3 xruns at 12.4 s, 80.1 s, 80.2 s"
    assert describe_xruns(5, [1.0, 2.0, 3.0, 4.0, 5.0]) == "5 xruns at 1.0 s, 2.0 s, 3.0 s, …"
    verdict = judge_take(True, {"ok": True}, 3, [12.4, 80.1, 80.2])
    assert verdict.describe() == (
        "flagged: 3 buffer under/overruns while recording at 12.4 s, 80.1 s, 80.2 s (audio "
        "lost or repeated)"
    )


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
    take.xrun_times_s = [1.25, 7.5, 7.5]
    assert take.verdict.reasons[0].startswith("3 buffer under/overruns while recording at 1.2 s")
    assert describe_alignment(alignment, take.xruns, take.xrun_times_s).endswith(
        take.verdict.describe()
    )
