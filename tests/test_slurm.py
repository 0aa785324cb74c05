"""The cluster path, run for real: a single-node SLURM (Debian's slurm-wlm + munge, this host at 127.0.0.1 with its
real cores and memory, no accounting) started by the module fixture, and the tiny model's DAG submitted to it through
the executor plugin with the shipped CPU profile workflow/profiles/slurm-cpu. One SLURM run, with one capture job
cancelled (scancel) while it runs: the profile's retries redo it, and the masks and iou.nc equal a local run's byte
for byte; the scheduler's own records (scontrol) show every job with the profile's resources.

Needs root (the daemons) and apt or the packages; otherwise skipped, saying which."""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, WORKFLOW_SETS, write_config

pytestmark = pytest.mark.slow

PROFILE = REPO / "workflow" / "profiles" / "slurm-cpu"
CONF = Path("/etc/slurm/slurm.conf")
SETS = {"mem": WORKFLOW_SETS["mem"][:8]}  # 2 capture chunks of 4 prompts
COLLECTIONS = {"m4": {"set": "mem", "n_subsets": 2, "size": 4, "seed": 0}}
TARGET = "results/iou.nc"


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _install_packages() -> None:
    """slurm-wlm and munge from Debian when missing (apt-get update once first), else skip saying why."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if not shutil.which("apt-get"):
        pytest.skip("SLURM test: slurm-wlm/munge are not installed and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"]):
        proc = _run(cmd, env=env, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"SLURM test: `{' '.join(cmd)}` failed, so slurm-wlm/munge cannot be had here: "
                        f"{proc.stderr.strip()[-300:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This host as SLURM sees it (`slurmd -C`: CPUs, sockets, cores, threads, RealMemory), at 127.0.0.1."""
    line = _run(["slurmd", "-C"], timeout=30).stdout.splitlines()[0]
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def _slurm_conf(state: Path, node: str) -> str:
    name = re.match(r"NodeName=(\S+)", node).group(1)
    return "\n".join([
        "ClusterName=memprune-test",
        f"SlurmctldHost={name}(127.0.0.1)",
        "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "MpiDefault=none",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={state}/ctld", f"SlurmdSpoolDir={state}/d",
        f"SlurmctldPidFile={state}/slurmctld.pid", f"SlurmdPidFile={state}/slurmd.pid",
        f"SlurmctldLogFile={state}/slurmctld.log", f"SlurmdLogFile={state}/slurmd.log",
        # no cgroups in a container; by process group, so a cancelled job's step (a snakemake that waits for its
        # job on SIGTERM) is killed with it after KillWait
        "ProctrackType=proctrack/pgid", "TaskPlugin=task/none", "KillWait=5",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MinJobAge=900",  # finished jobs stay visible to squeue (the plugin's status command) and scontrol
        "ReturnToService=2",
        node,
        f"PartitionName=main Nodes={name} Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n"


def _node_idle() -> bool:
    proc = _run(["sinfo", "-h", "-o", "%t"], timeout=10)
    return proc.returncode == 0 and proc.stdout.split() == ["idle"]


def _munge_works() -> bool:
    enc = _run(["munge", "-n"], timeout=10)
    return enc.returncode == 0 and _run(["unmunge"], input=enc.stdout, timeout=10).returncode == 0


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM; the daemons this fixture started are stopped by pid at the end, and
    /etc/slurm/slurm.conf is put back as it was (removed if there was none)."""
    if os.geteuid() != 0:
        pytest.skip("SLURM test: needs root to install and start munged, slurmctld and slurmd")
    _install_packages()
    if CONF.exists() and _node_idle():
        yield {"started": []}  # a scheduler already runs here: use it, start nothing
        return
    state = tmp_path_factory.mktemp("slurm")
    (state / "ctld").mkdir()
    (state / "d").mkdir()
    backup = CONF.read_bytes() if CONF.exists() else None
    started: list[subprocess.Popen] = []
    try:
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(_slurm_conf(state, _node_line()))
        if not _munge_works():
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
                shutil.chown(key, "munge", "munge")
            Path("/run/munge").mkdir(exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            # munged refuses root with Debian's munge-owned /var/lib/munge: it runs as its own user
            started.append(subprocess.Popen(["munged", "--foreground"], user="munge", group="munge",
                                            stdout=open(state / "munged.out", "w"), stderr=subprocess.STDOUT))
            _wait(_munge_works, 20, "munged", state / "munged.out")
        for daemon in ("slurmctld", "slurmd"):
            started.append(subprocess.Popen([daemon, "-D"], stdout=open(state / f"{daemon}.out", "w"),
                                            stderr=subprocess.STDOUT))
            time.sleep(1.0)
        _wait(_node_idle, 60, "the node idle in sinfo", state / "slurmctld.log")
        yield {"started": started, "state": state}
    finally:
        if started:
            _run(["scancel", "--full", "--cluster", "memprune-test", "--state", "RUNNING,PENDING"], timeout=10)
        for proc in reversed(started):  # slurmd, slurmctld, munged: exactly the processes started here
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if backup is None:
            CONF.unlink(missing_ok=True)
        else:
            CONF.write_bytes(backup)


def _wait(condition, seconds: float, what: str, log: Path) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if condition():
            return
        time.sleep(0.5)
    text = log.read_text()[-2000:] if log.exists() else "(no log)"
    raise AssertionError(f"SLURM test: {what} not ready after {seconds} s:\n{text}")


def digest_tree(path: Path) -> str:
    """Every file's path and bytes under `path` (Snakemake's empty .snakemake_timestamp markers aside)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != ".snakemake_timestamp":
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _squeue() -> list[tuple[str, str, str]]:
    """(job id, state, comment) of every job the controller knows (the plugin's comment is
    rule_<rule>_wildcards_...)."""
    out = _run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"], timeout=10).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]


def _cancel_running_capture(workdir: Path, proc: subprocess.Popen, timeout: float = 240) -> str:
    """scancel a capture_chunk job once SLURM runs it and its `memprune capture` has started (its rule log
    exists); returns the SLURM job id."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        for jobid, state, comment in _squeue():
            m = re.fullmatch(r"rule_capture_chunk_wildcards_(\w+)_(\d+)", comment)
            if m and state == "RUNNING" and list(workdir.glob(f"logs/**/{m.group(1)}_chunk{m.group(2)}.log")):
                subprocess.run(["scancel", jobid], check=True)
                return jobid
        time.sleep(0.3)
    raise AssertionError("no capture_chunk job was seen running (snakemake ended or the time ran out)")


def _scontrol(jobid: str) -> dict[str, str]:
    out = _run(["scontrol", "-o", "show", "job", jobid], timeout=10).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _processes_under(workdir: Path) -> list[int]:
    """Pids of processes whose command line names `workdir` (this test's own temporary directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(workdir).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _batch_script(jobid: str) -> str:
    """The script SLURM holds for a job (the plugin's --wrap: the job step's snakemake command)."""
    return _run(["scontrol", "write", "batch_script", jobid, "-"], timeout=10).stdout


def _minutes(limit: str) -> int:
    """SLURM's TimeLimit ([days-]hours:minutes:seconds) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def test_dag_on_slurm_matches_local_and_survives_scancel(slurm, tiny_model, tmp_path):
    t0 = time.time()
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    cluster.mkdir()
    write_config(local, tiny_model, SETS, COLLECTIONS)
    shutil.copy(local / "config.yaml", cluster / "config.yaml")  # the same prompt files and model
    common = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    local_cmd = [*common, "--directory", str(local), "--configfile", str(local / "config.yaml"), "--cores", "2", TARGET]
    cmd = [*common, "--directory", str(cluster), "--configfile", str(cluster / "config.yaml"),
           "--profile", str(PROFILE),
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2", TARGET]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path / "snakemake_slurm.log"
    # the local run goes beside the SLURM one: it fills the time the plugin waits between status checks
    with open(log_path, "w") as log, open(tmp_path / "snakemake_local.log", "w") as local_log:
        local_proc = subprocess.Popen(local_cmd, stdout=local_log, stderr=subprocess.STDOUT, env=env)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            cancelled = _cancel_running_capture(cluster, proc)
            rc = proc.wait(timeout=420)
            t_slurm = time.time() - t0
            assert local_proc.wait(timeout=300) == 0, (tmp_path / "snakemake_local.log").read_text()[-4000:]
        finally:
            for p in (proc, local_proc):
                if p.poll() is None:
                    p.kill()
    text = log_path.read_text()
    t_total = time.time() - t0
    left = _processes_under(cluster)
    for pid in left:  # this run's job processes that outlived their SLURM job (none should)
        os.kill(pid, 9)
    assert not left, f"processes of this run's SLURM jobs still running after it: {left}"
    assert rc == 0, f"snakemake on SLURM failed ({rc}):\n{text[-6000:]}"

    # (c) the scheduler ran every job: their SLURM ids in the log, their records with the profile's resources
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/rule_(\w+?)/", text)
    rules = [r for _, r in submitted]
    assert sorted(set(rules)) == ["analysis", "capture_chunk", "capture_null", "gather_subsets", "masks",
                                  "model_layers"], text[-3000:]
    assert rules.count("capture_chunk") == 3  # 2 chunks + the cancelled one's retry
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    seen = []
    for jobid, rule in submitted:
        job = _scontrol(jobid)
        want = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        assert job["Comment"].startswith(f"rule_{rule}"), job
        assert job["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, job["MinMemoryNode"])
        assert int(job["NumCPUs"]) == want["cpus_per_task"], (rule, job["NumCPUs"])
        assert _minutes(job["TimeLimit"]) == want["runtime"], (rule, job["TimeLimit"])
        assert "gres" not in job.get("TresPerNode", "") and "gpu" not in job.get("TRES", ""), job
        seen.append((jobid, rule, job["JobState"], job["MinMemoryNode"], job["NumCPUs"], job["TimeLimit"]))
    states = {jobid: state for jobid, _, state, *_ in seen}
    assert states.pop(cancelled) == "CANCELLED"
    assert set(states.values()) == {"COMPLETED"}, seen

    # (b) the cancelled job failed in Snakemake's eyes and its retry (attempt 2) redid it
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in text, text[-4000:]
    assert "Trying to restart job" in text
    comment = _scontrol(cancelled)["Comment"]
    retry = [j for j, r in submitted if int(j) > int(cancelled) and _scontrol(j)["Comment"] == comment]
    assert len(retry) == 1 and "--attempt 2" in _batch_script(retry[0])

    # (a) the same bytes as the local run
    masks_local, masks_cluster = local / "results/tiny/masks", cluster / "results/tiny/masks"
    assert digest_tree(masks_cluster) == digest_tree(masks_local)
    for nc in ("results/iou.nc", "results/density.nc"):
        assert (cluster / nc).read_bytes() == (local / nc).read_bytes(), nc
    print(f"\nSLURM run: {len(submitted)} jobs (id, rule, state, memory, cpus, time limit) {seen}; cancelled "
          f"{cancelled}, retried as {retry[0]}; SLURM run {t_slurm:.0f} s, both runs {t_total:.0f} s")
