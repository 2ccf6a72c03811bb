"""Grid claims: exclusive, taken over only when free, never by two workers at once."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from kt_transfer.runs import claims


def _far_away_claim(path):
    """A claim held by a process of another machine (only its age can free it)."""
    with open(path, "w") as f:
        json.dump(
            {
                "host": "far-away",
                "machine": "far-away:boot:1",
                "pid": 7,
                "pid_start": "1",
                "token": "x",
            },
            f,
        )


def test_a_claim_is_exclusive_until_released_or_stale(tmp_path):
    claim = claims.try_claim(str(tmp_path), "A1B", timeout_s=60)
    assert claim is not None and claim.generation == 0
    assert claims.try_claim(str(tmp_path), "A1B", timeout_s=60) is None
    assert claims.held_cells(str(tmp_path), 60) == {"A1B"}
    claim.release()  # not finished: marked released, the number is not reused
    again = claims.try_claim(str(tmp_path), "A1B", timeout_s=60)
    assert again is not None and again.generation == 1
    again.release(finished=True)
    assert not os.listdir(tmp_path)
    # A claim nobody refreshes goes stale after the timeout and is taken over.
    path = tmp_path / "A1B.claim.4"
    _far_away_claim(path)
    assert claims.try_claim(str(tmp_path), "A1B", timeout_s=60) is None
    old = time.time() - 120
    os.utime(path, (old, old))
    taken = claims.try_claim(str(tmp_path), "A1B", timeout_s=60)
    assert taken is not None and taken.generation == 5
    taken.release(finished=True)


@pytest.mark.slow
def test_a_claim_of_a_dead_local_process_is_taken_over_at_once(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    record = {**claims.identity(), "pid": int(dead), "pid_start": "0", "token": "x"}
    (tmp_path / "B2B.claim.0").write_text(json.dumps(record))
    claim = claims.try_claim(str(tmp_path), "B2B", timeout_s=3600)
    assert claim is not None and claim.generation == 1
    claim.release(finished=True)


def test_a_live_process_with_the_same_host_name_elsewhere_is_not_presumed_dead(tmp_path):
    """Containers share host names, and PIDs are reused: the same host name with another
    machine id, or a live PID whose start time differs, is judged by age alone."""
    me = claims.identity()
    other_container = {
        **me,
        "machine": me["machine"] + "-other-namespace",
        "pid": 999999,
        "token": "x",
    }
    (tmp_path / "A2B.claim.0").write_text(json.dumps(other_container))
    assert claims.try_claim(str(tmp_path), "A2B", timeout_s=3600) is None
    reused_pid = {**me, "pid_start": "not-my-start", "token": "y"}  # my PID, another process
    (tmp_path / "A3B.claim.0").write_text(json.dumps(reused_pid))
    claim = claims.try_claim(str(tmp_path), "A3B", timeout_s=3600)
    assert claim is not None  # the process that wrote it is gone: its PID is mine now
    claim.release(finished=True)


def test_the_heartbeat_keeps_a_long_claim_fresh_and_notices_a_takeover(tmp_path):
    claim = claims.try_claim(str(tmp_path), "A3B", timeout_s=0.4)
    time.sleep(1.0)  # longer than the timeout: only the heartbeat keeps it alive
    assert not claims.is_free(claim.path, 0.4) and not claim.lost
    (tmp_path / "A3B.claim.1").write_text("{}")  # another worker took it over
    time.sleep(0.5)
    assert claim.lost
    claim.release()
    assert (tmp_path / "A3B.claim.1").exists()  # the new owner's claim is left alone


def _race(claims_dir, barrier, wins):
    barrier.wait()
    claim = claims.try_claim(claims_dir, "A4B", timeout_s=60)
    if claim is not None:
        wins.put(claim.generation)
    barrier.wait()  # the winner stays alive (and holding) until every racer has tried


def test_many_processes_racing_for_one_stale_claim_have_exactly_one_winner(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = 8
    for round_ in range(15):
        claims_dir = tmp_path / f"round{round_}"
        claims_dir.mkdir()
        stale = claims_dir / "A4B.claim.3"
        _far_away_claim(stale)
        old = time.time() - 600
        os.utime(stale, (old, old))
        barrier, wins = context.Barrier(workers), context.Queue()
        procs = [
            context.Process(target=_race, args=(str(claims_dir), barrier, wins))
            for _ in range(workers)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        winners = []
        while not wins.empty():
            winners.append(wins.get())
        assert winners == [4], (round_, winners)
        assert sorted(os.listdir(claims_dir)) == ["A4B.claim.3", "A4B.claim.4"]
