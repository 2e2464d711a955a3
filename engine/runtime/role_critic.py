"""The critic role: the value model (a whole trunk with a value head, optionally LoRA, or a value
head alone on the reference's hidden states), its value-loss update and its checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from engine import algorithms as A
from engine.config import RunConfig, resolve_role_model
from engine.runtime.role_base import (
    Result,
    Role,
    Tensors,
    capture_rng,
    check_finite,
    named_write_errors,
    restore_rng,
    role_seed,
    score_parts,
)
from engine.runtime.role_training import TrainedRole, backward, batches, make_adamw, make_scheduler, step_generator


def _hidden_size(source: str) -> int:
    from transformers import AutoConfig

    from engine.models import resolve_model_path

    conf = AutoConfig.from_pretrained(resolve_model_path(source))
    size = getattr(conf, "hidden_size", None) or getattr(conf, "n_embd", None) or getattr(conf, "d_model", None)
    if not size:
        raise ValueError(f"cannot tell the hidden size of {source!r} from its config")
    return int(size)


class ValueHead(torch.nn.Module):
    """A linear value head on given hidden states ``[B, R, H] -> [B, R]``, zero-initialised so
    the first values are exactly 0 (as with the whole-model critic)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.float()).squeeze(-1)


class CriticRole(TrainedRole, Role):
    name = "critic"

    def __init__(self, cfg: RunConfig, progress=None):
        super().__init__(cfg, progress)
        from engine.models import load_critic

        # critic_trunk "reference": a value head on the reference's hidden states, which the
        # driver passes in as tensors["hidden"]; no trunk of its own.
        self.head_only = cfg.ppo.critic_trunk == "reference"
        if self.head_only:
            self.model = ValueHead(_hidden_size(resolve_role_model(cfg, "reference"))).to(self.device)
            self.progress("critic: value head on the reference's hidden states (zero-initialised)")
        else:
            self.model = load_critic(
                resolve_role_model(cfg, self.name), dtype=self.weights_dtype, device=str(self.device),
                attn_implementation=self.attn_implementation(),
                gradient_checkpointing=self.role_cfg.gradient_checkpointing or self._planned_checkpointing(),
                progress=self.progress,
            )
        self.lora = None if self.head_only else self.role_cfg.lora
        if self.lora is not None:
            # the trunk gets the adapter; the value head trains whole (peft's modules_to_save)
            from engine.models import _token_head, apply_lora, count_parameters

            lo, inner = self.lora, self.model.model
            head = next(n for n in ("score", "classifier") if getattr(inner, n, None) is _token_head(inner))
            self.model.model = apply_lora(inner, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                                          target_modules=lo.target_modules, task_type="TOKEN_CLS",
                                          key="critic.lora", modules_to_save=[head],
                                          seed=role_seed(cfg.run.seed, "critic.lora"))
            self.progress(f"critic: LoRA r={lo.r} alpha={lo.alpha:g} on {', '.join(lo.target_modules)} "
                          f"+ the value head: {count_parameters(self.model, trainable_only=True):,} trainable "
                          f"of {count_parameters(self.model):,} parameters")
        self.model = self.ranks.prepare(self.model)
        p = cfg.ppo
        self.optimizer = make_adamw(
            [q for q in self.model.parameters() if q.requires_grad], lr=p.critic_lr, weight_decay=p.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, p.lr_schedule, p.warmup_steps, cfg.run.steps)

    def _values(self, inputs: tuple, idx=None, phase: str = "score") -> torch.Tensor:
        """Values of the states *before* each response token (positions P-1 .. P+R-2), for
        the rows ``idx`` (all when None)."""
        if self.head_only:
            hidden = inputs[0] if idx is None else inputs[0][idx]
            return self.model(self._to(hidden)).float()
        ids, attn, P, R = inputs
        if idx is not None:
            ids, attn = ids[idx], attn[idx]
        with self.amp(phase):
            v = self.model(input_ids=self._to(ids), attention_mask=self._to(attn))
        return v[:, P - 1 : P + R - 1].float()

    def _inputs(self, tensors: Tensors) -> tuple:
        if self.head_only:
            if "hidden" not in tensors:
                raise ValueError("critic with ppo.critic_trunk=reference needs the reference's "
                                 "hidden states (tensor 'hidden')")
            return (tensors["hidden"].float(),)
        ids = torch.cat([tensors["query_ids"], tensors["response_ids"]], dim=1)
        attn = torch.cat([tensors["query_mask"], tensors["response_mask"]], dim=1)
        return ids, attn, tensors["query_ids"].shape[1], tensors["response_ids"].shape[1]

    def _token_spans(self, tensors: Tensors):
        """Token-budget micro-batches are cut by each row's query and response spans; a value head
        on the reference's hidden states gets no query part and is a single linear layer over
        them, so its update goes by rows (``ppo.micro_batch_size``) whatever the budget."""
        return None if self.head_only else super()._token_spans(tensors)

    def op_values(self, tensors: Tensors, args: dict) -> Result:
        inputs = self._inputs(tensors)
        self.model.eval()
        parts = None if self.head_only else score_parts(self.cfg, tensors)
        with torch.no_grad():
            if parts is not None:  # ppo.micro_batch_tokens: bucketed passes, padded back to [B, R]
                from engine.runtime.microbatch import pad_to, scatter_rows

                B, R = tensors["response_ids"].shape
                v = scatter_rows([(rows, pad_to(self._values(self._inputs(sub)), R)) for rows, sub in parts], B)
            else:
                v = self._values(inputs)
        return {"values": v.cpu()}, {}

    def op_update(self, tensors: Tensors, args: dict) -> Result:
        return self._two_phase(lambda: self._update(tensors, args))

    def _update(self, tensors: Tensors, args: dict) -> Result:
        p = self.cfg.ppo
        step = int(args["step"])
        inputs = self._inputs(tensors)
        mask = tensors["response_mask"].float()
        old_v, ret = tensors["values"].float(), tensors["returns"].float()
        check_finite(self.name, "update", returns=ret[mask.bool()], values=old_v[mask.bool()])
        B, R = mask.shape
        spans = self._token_spans(tensors)  # token-budget micro-batches (engine/runtime/microbatch.py)
        if spans is not None:
            from engine.runtime import microbatch as MB
        scaler = self.grad_scaler()
        self.model.train()
        stats: dict[str, list[float]] = {"value_loss": [], "vf_clipfrac": [], "critic_grad_norm": []}
        for epoch in range(p.epochs):
            perm = torch.randperm(B, generator=step_generator(self.cfg.run.seed, step, 101 + epoch))
            for mb in batches(B, p.mini_batch_size):
                mb_idx = perm[mb]
                n_mb = len(mb_idx)
                self.optimizer.zero_grad(set_to_none=True)
                for idx, weight, scale in self.ranks.micro_parts(self._micro_batches(mb_idx, spans), n_mb, mask):
                    if spans is not None:  # the value loss is a token mean: each part by its token share
                        weight = MB.token_weights(idx, mb_idx, mask)[0]
                    if spans is not None and not self.head_only:
                        sub = MB.sub_batch(tensors, idx, *spans)
                        v = MB.pad_to(self._values(self._inputs(sub), None, "update"), R)
                    else:
                        v = self._values(inputs, idx, "update")
                    loss, st = A.value_loss(v, self._to(old_v[idx]), self._to(ret[idx]), self._to(mask[idx]), clip=p.value_clip)
                    self._check_loss(value_loss=loss)
                    backward(p.vf_coef * loss * weight, scaler)
                    stats["value_loss"].append(float(loss.detach()) * scale)
                    stats["vf_clipfrac"].append(float(st.get("clipfrac", 0.0)) * scale)
                self.ranks.sync_grads(self.model)
                gn = self._clip_and_step(p.grad_clip, scaler)
                stats["critic_grad_norm"].append(float(gn))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {}, {k: (sum(v) / len(v) if v else 0.0) for k, v in stats.items()}

    def op_save(self, tensors: Tensors, args: dict) -> Result:
        return named_write_errors(lambda: self._save(args), Path(args["path"]))

    def _save(self, args: dict) -> Result:
        d = Path(args["path"]) / self.name
        if self.lora is not None:  # peft's format: the adapter and the value head alone
            if not self.ranks.writes():
                return {}, {}
            d.mkdir(parents=True, exist_ok=True)
            self.model.model.save_pretrained(d, safe_serialization=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": capture_rng()}, d / "critic_state.pt")
            return {}, {}
        if self.ranks.fsdp:
            sd = self.ranks.full_model_state(self.model)
            osd = self.ranks.full_optimizer_state(self.model, self.optimizer)
        else:
            sd, osd = self.model.state_dict(), self.optimizer.state_dict()
        if not self.ranks.writes():
            return {}, {}
        d.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": sd, "optimizer": osd, "scheduler": self.scheduler.state_dict(), "rng": capture_rng()},
            d / "critic_state.pt",
        )
        return {}, {}

    def op_load(self, tensors: Tensors, args: dict) -> Result:
        self._pending = None
        d = Path(args["path"]) / self.name
        st = torch.load(d / "critic_state.pt", weights_only=False,
                        map_location="cpu" if self.ranks.fsdp else self.device)
        if self.lora is not None:
            from safetensors.torch import load_file

            from engine.models import load_lora_state_dict

            if not (d / "adapter_model.safetensors").is_file():
                raise RuntimeError(f"critic checkpoint {d} holds no LoRA adapter (adapter_model.safetensors): "
                                   f"was it saved without critic.lora?")
            load_lora_state_dict(self.model.model, load_file(d / "adapter_model.safetensors",
                                                             device=str(self.device)), str(d))
            self.optimizer.load_state_dict(st["optimizer"])
        elif "model" not in st:
            raise RuntimeError(f"critic checkpoint {d} holds a LoRA adapter, not the whole critic: "
                               f"was it saved with critic.lora?")
        elif self.ranks.fsdp:
            self.ranks.load_full_state(self.model, self.optimizer, st["model"], st["optimizer"])
        else:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        restore_rng(st["rng"])
        return {}, {}

