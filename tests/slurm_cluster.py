"""A throwaway Slurm cluster on this machine for the Slurm tests: munged, slurmctld and one
slurmd per node, all with files under one folder and ports of their own.

Every node is this host (``NodeHostname``) reached at 127.0.0.1, each slurmd started with
``-N NAME`` on its own port: two nodes give a real multi-node allocation (``srun --exclude``,
one task per node) on one machine. The configuration avoids what a container lacks: no cgroups
(``proctrack/linuxproc``, ``task/none``), no accounting database, no MPI plugin; the daemons
run as root (``SlurmUser=root``) and talk through a munged of their own (``AuthInfo=socket=``),
so a system munged or Slurm, if any, is never touched. Clients find the cluster through
``SLURM_CONF`` in ``SlurmCluster.env``.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

#: the programs a cluster needs (Debian: slurm-wlm, munge)
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue",
         "scancel")

#: variables of an enclosing Slurm job that must not leak into the test cluster's jobs
FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")

#: job states after which a job runs no more (COMPLETING is not one: its processes may live)
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


#: run a command (``$@``) with an empty tmpfs over a folder (``$0``), seen by it alone
HIDE = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
        'mount -t tmpfs mpo-private "$0" && exec "$@"']


def can_hide_folders(scratch: Path) -> bool:
    """Whether this machine lets ``HIDE`` work (root, mount namespaces allowed)."""
    scratch.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([*HIDE, str(scratch), "true"], capture_output=True, timeout=30)
    return res.returncode == 0


def missing_tools() -> list[str]:
    """The programs of ``TOOLS`` not on PATH (slurmd and munged live in /usr/sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [t for t in TOOLS if shutil.which(t, path=path) is None]


def free_port(count: int = 1) -> int:
    """A port p such that p .. p + count - 1 are all free now (a bind test, not a lease), below
    Linux's ephemeral range (32768-60999), where any outgoing connection could take it later."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports in 20000-32000")


def _free(port: int) -> bool:
    with closing(socket.socket()) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


@dataclass
class Job:
    """A finished batch job: its exit status (minus the signal that ended it, if one did), its
    final state, its output file's text, and the seconds the test waited for it."""

    job_id: str
    returncode: int
    state: str
    output: str
    wall_seconds: float


@dataclass
class SlurmCluster:
    """munged + slurmctld + one slurmd per node, under ``root``; ``start`` then ``stop``."""

    root: Path
    nodes: tuple[str, ...] = ("mpo1", "mpo2")
    cpus_per_node: int = 1
    #: node -> a folder that node sees as an empty folder of its own (its slurmd runs in a mount
    #: namespace with a tmpfs there): storage that is not shared
    private: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a Slurm client of this cluster (none of an enclosing job's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
        env["SLURM_CONF"] = str(self.conf)
        return env

    def write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        r = self.root
        for sub in ("munge", "state", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=mpotest", f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={r}/munge/sock",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd-%n.log",
            # no cgroups here: track processes through /proc, bind no CPUs
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "MpiDefault=none", "SwitchType=switch/none", "ReturnToService=2",
        ]
        for name in self.nodes:
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 "
                         f"Port={free_port()} CPUs={self.cpus_per_node} State=UNKNOWN")
        lines.append(f"PartitionName=test Nodes={','.join(self.nodes)} Default=YES "
                     "MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / "log" / f"{name}.stdout").open("wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env)

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start the daemons, wait until every node is idle."""
        self.write_conf()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        m = self.root / "munge"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={m}/sock",
                               f"--key-file={key}", f"--log-file={m}/munged.log",
                               f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed"])
        self._until(lambda: (m / "sock").exists(), timeout, "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._until(lambda: "UP" in self._run(["scontrol", "ping"]), timeout, "slurmctld")
        for name in self.nodes:
            argv = ["slurmd", "-D", "-f", str(self.conf), "-N", name]
            if name in self.private:
                argv = [*HIDE, str(self.private[name]), *argv]
            self._spawn(f"slurmd-{name}", argv)
        self._until(self._all_idle, timeout, "every node idle in sinfo")

    def _run(self, argv: list[str]) -> str:
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        return res.stdout + res.stderr

    def _all_idle(self) -> bool:
        states = self._run(["sinfo", "-h", "-N", "-o", "%N %t"]).split()
        return states[1::2] == ["idle"] * len(self.nodes)

    def _until(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the test Slurm cluster did not start ({what}; exited: "
                                   f"{dead or 'none'})\n{self.logs()}")
            time.sleep(0.3)

    def submit(self, script: Path, args: list[str], *, options: list[str],
               env: dict[str, str], cwd: Path) -> str:
        """``sbatch`` the script with its arguments (output to ``cwd/job-ID.out``); the job id."""
        res = subprocess.run(["sbatch", "--parsable", f"--output={cwd}/job-%j.out", *options,
                              str(script), *args], env={**self.env, **env}, cwd=cwd,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"sbatch failed: {res.stdout}{res.stderr}\n{self.logs()}")
        return res.stdout.strip().split(";")[0]

    def wait(self, job_id: str, cwd: Path, *, timeout: float) -> Job:
        """Wait for the job's end; a job still running at ``timeout`` is cancelled (and reported
        with exit status -1). Polls ``scontrol show job`` every second rather than using
        ``sbatch --wait``, whose backoff adds up to half a minute to each job."""
        start, rc, state = time.monotonic(), -1, "TIMED OUT IN THE TEST"
        while time.monotonic() - start < timeout:
            fields = self.job_fields(job_id)
            if fields.get("JobState") in FINAL_STATES:
                code, signal = fields.get("ExitCode", "-1:0").split(":")
                rc, state = (int(code) if signal == "0" else -int(signal)), fields["JobState"]
                break
            time.sleep(1.0)
        else:
            self.cancel_all()
        path = cwd / f"job-{job_id}.out"
        text = path.read_text(errors="replace") if path.exists() else "(no output file)"
        return Job(job_id, rc, state, text, time.monotonic() - start)

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s KEY=VALUE fields."""
        out = self._run(["scontrol", "-o", "show", "job", job_id])
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def cancel(self, job_id: str) -> None:
        """``scancel``: what a time limit does too (SIGTERM to every step, SIGKILL after
        KillWait)."""
        self._run(["scancel", job_id])

    def cancel_all(self, wait: float = 60.0) -> None:
        """Cancel every job of this cluster and wait until none is left."""
        if "slurmctld" not in self.procs:
            return
        for job in self._run(["squeue", "-h", "-o", "%i"]).split():
            self._run(["scancel", job])
        deadline = time.monotonic() + wait
        while self._run(["squeue", "-h", "-o", "%i"]).strip() and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, then stop the daemons (slurmd, slurmctld, munged: reverse order)."""
        try:
            self.cancel_all()
        finally:
            for name in reversed(list(self.procs)):
                proc = self.procs.pop(name)
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    def logs(self, lines: int = 15) -> str:
        """The last lines of every daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)
