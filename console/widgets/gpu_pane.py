"""GPU pane: per device utilisation, memory used/total with a bar, temperature and power, and each
run process's GPU memory labelled with its role; without NVML, why not, and each role's host
memory instead. Never blank, never a crash."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from console.gpu import GpuReport, host_memory
from console.model import RunModel


def bar(frac: float | None, width: int = 14) -> Text:
    if frac is None:
        return Text("N/A")
    frac = max(0.0, min(1.0, frac))
    filled = round(width * frac)
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    t = Text("█" * filled, style=style)
    t.append("░" * (width - filled), style="grey35")
    return t


def _mb(v) -> str:
    if v is None:
        return "N/A"
    return f"{v / 1024:.1f}G" if v >= 1024 else f"{v:.0f}M"


def _na(v, fmt: str) -> str:
    return "N/A" if v is None else fmt.format(v)


class GpuPane(Static):
    def render_report(self, report: GpuReport | None, model: RunModel) -> None:
        out = Text()
        pids = model.pids
        role_of = {int(p): r for r, p in pids.items()}
        if report is None:
            out.append("probing NVML…", style="dim")
            self.update(out)
            return
        if report.available:
            for d in report.devices:
                out.append(f"GPU{d.index} ", style="bold")
                out.append(f"{d.name}\n")
                out.append(f" util {_na(d.util, '{}%')}  temp {_na(d.temp_c, '{}°C')}  "
                           f"power {_na(d.power_w, '{:.0f}')}/{_na(d.power_limit_w, '{:.0f}W')}\n")
                frac = (d.mem_used_mb / d.mem_total_mb) if d.mem_used_mb is not None and d.mem_total_mb else None
                out.append(" mem ")
                out.append_text(bar(frac))
                out.append(f" {_mb(d.mem_used_mb)}/{_mb(d.mem_total_mb)}\n")
                ours = [(role_of[p.pid], p) for p in d.processes if p.pid in role_of]
                for role, p in ours:
                    out.append(f"   {role:<10}", style="cyan")
                    out.append(f" pid {p.pid:<8} {_mb(p.used_mb)}\n")
                others = [p for p in d.processes if p.pid not in role_of]
                if others:
                    out.append(f"   other processes: {len(others)}, "
                               f"{_mb(sum(p.used_mb or 0 for p in others))}\n", style="dim")
            if not report.devices:
                out.append("NVML: no device could be read\n", style="yellow")
        else:
            out.append(report.reason or "NVML unavailable", style="yellow")
            out.append("\n")
        # host memory per role (always useful on CPU; also shown under the GPUs when there is room)
        mem = host_memory(pids, report.live_rss, model.role_memory(), model.metrics[-1].step if model.metrics else None)
        if mem:
            t = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold", expand=False)
            t.add_column("role", no_wrap=True, min_width=9)
            t.add_column("pid", justify="right")
            t.add_column("host rss", justify="right")
            t.add_column("peak", justify="right")
            t.add_column("cpu", justify="right")
            t.add_column("from", style="dim", no_wrap=True, overflow="ellipsis")
            cpu = report.live_cpu
            for m in mem:
                c = cpu.get(m.role)
                t.add_row(m.role, str(m.pid or "–"), _mb(m.rss_mb), _mb(m.peak_mb),
                          f"{c:.0f}%" if isinstance(c, (int, float)) else "–", m.source)
            self.update(Group(out, t))
        else:
            out.append("no role memory recorded yet", style="dim")
            self.update(out)

