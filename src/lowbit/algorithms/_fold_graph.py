"""Which module feeds which: the executed graph of a model, traced with ``torch.fx``.

Folding and equalisation need the data flow, not the order modules were registered in: a
BatchNorm folds into the layer whose output it reads only if nothing else reads that output.
:func:`module_graph` traces the model symbolically (standard ``torch.nn`` modules and lowbit's
modules are leaves) and returns, for every module call, the modules that produced its inputs
and the consumers of its output.  Inputs or consumers that are not module calls (a residual
``+``, a ``view``) appear as ``"<op:target>"`` strings, so a caller sees them and refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from ..errors import ConfigError


@dataclass
class ModuleCall:
    """One call of a module in the traced graph.

    name: the module's qualified name. inputs / users: names of the modules producing this
    call's inputs / consuming its output (``"<op:target>"`` for anything else).
    calls: how many times the module is called in one forward.
    """

    name: str
    module: nn.Module
    inputs: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    calls: int = 1


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (super().is_leaf_module(m, qualname)
                or type(m).__module__.startswith("lowbit.nn."))


def _label(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else f"<{node.op}:{node.target}>"


def module_graph(model: nn.Module) -> dict[str, ModuleCall]:
    """``name -> ModuleCall`` for every module the forward calls, in execution order.

    Raises :class:`ConfigError` when the model cannot be traced by ``torch.fx`` (data-
    dependent control flow); such a model is left as it is by the callers.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise ConfigError("model", type(model).__name__, "a model torch.fx can trace",
                          fix=f"make forward traceable or apply the steps by hand ({exc})"
                          ) from exc
    calls: dict[str, ModuleCall] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        entry = calls.get(node.target)
        if entry is not None:
            entry.calls += 1
            entry.users += [_label(u) for u in node.users]
            continue
        calls[node.target] = ModuleCall(
            node.target, model.get_submodule(node.target),
            [_label(a) for a in node.all_input_nodes], [_label(u) for u in node.users])
    return calls


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at ``name`` by ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
