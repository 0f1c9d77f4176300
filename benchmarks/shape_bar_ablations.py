"""Ablations for the zero-shot shape bar of the demo (docs/benchmarks.md, "What did not speed up shape").

Each idea is patched into the real trainer for one run instead of living in the library, because
none of them helped enough to keep. Usage (from the repository root, after `make demo` made the data):

    .venv/bin/python benchmarks/shape_bar_ablations.py NAME [--nbr G [--k K]] [--scale-lr M] [--allneg N]
        [--wdrop P] [--bow W] [--data DIR] [--runs DIR] [-- --set key=value ...]

- ``--nbr G``: batches made of groups of G captions that are TF-IDF (1-2-gram) neighbours (top K).
- ``--scale-lr M``: the learned temperature gets M times the learning rate.
- ``--allneg N``: the first N manifest negatives of every image per step instead of one sampled.
- ``--wdrop P``: each caption word dropped with probability P (CLIPA-style text masking).
- ``--bow W``: a SuperClass-style auxiliary loss (weight W): a linear head on the image embedding
  predicts the IDF-weighted bag of caption tokens (softmax cross-entropy).

Every run uses the demo's settings (560 steps of 128, lr 2e-3, NegCLIP negatives, bf16) and
validates every 140 steps; the last lines print the validation metrics per step.
"""
import sys, json, time, os
import numpy as np, torch
import coembed.train.loop as loop
import coembed.train.optim as optim
from coembed.cli.main import main as cli_main

argv = sys.argv[1:]
name = argv.pop(0)
extra = argv[argv.index("--") + 1:] if "--" in argv else []
opts = argv[: argv.index("--")] if "--" in argv else argv
def opt(flag, default=None, typ=float):
    return typ(opts[opts.index(flag) + 1]) if flag in opts else default
G = opt("--nbr", 0, int); K = opt("--k", 16, int); SCALE_LR = opt("--scale-lr", 1.0)
FRAC = opt("--frac", 1.0)
DATA = opt("--data", "data/shapes", str)
RUNS = opt("--runs", "runs/ablations", str)
NNEG = opt("--allneg", 0, int)
WDROP = opt("--wdrop", 0.0)
BOW = opt("--bow", 0.0)
if BOW:
    import math as _m
    import torch.nn.functional as _F
    import coembed.train.step as stepmod
    AUX = {}
    orig_prep3 = loop._prepare
    def _prep3(cfg, resume):
        run = orig_prep3(cfg, resume)
        V = run.model.token_embedding.weight.shape[0]
        df = torch.zeros(V)
        caps = [c for s_ in run.dataset.samples for c in s_.captions]
        for i in range(0, len(caps), 4096):
            t = run.tokenizer(caps[i:i+4096], context_length=run.model.text_cfg.context_length)
            m = torch.zeros(t.shape[0], V); m.scatter_(1, t, 1.0); df += m.sum(0)
        idf = torch.log((len(caps) + 1) / (df + 1)); idf[:5] = 0
        AUX["idf"] = idf
        head = torch.nn.Linear(run.model.cfg.embed_dim, V)
        AUX["head"] = head
        run.optimizer.add_param_group({"params": list(head.parameters()), "weight_decay": 0.0})
        return run
    loop._prepare = _prep3
    def train_step(model, optimizer, images, tokens, *, loss_name, bf16, grad_clip, step, negative_tokens=None):
        model.train()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(images, tokens)
            negatives = model.encode_text(negative_tokens, normalize=True) if negative_tokens is not None else None
            logits = AUX["head"](out.image_emb)
        loss = stepmod.contrastive_loss(loss_name, out) if negatives is None else stepmod.contrastive_loss(loss_name, out, negatives)
        V = logits.shape[1]
        tgt = torch.zeros(tokens.shape[0], V); tgt.scatter_(1, tokens, 1.0); tgt = tgt * AUX["idf"]
        tgt = tgt / tgt.sum(1, keepdim=True).clamp_min(1e-6)
        aux = -(tgt * _F.log_softmax(logits.float(), dim=1)).sum(1).mean()
        total = loss + BOW * aux
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(AUX["head"].parameters()), grad_clip or float("inf"))
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, _m.log(100))
        return stepmod.StepResult(loss=loss.item(), grad_norm=norm.item())
    loop.train_step = train_step
if WDROP:
    import random as _r
    from coembed.data.datasets import ImageTextDataset
    _orig_cap = ImageTextDataset.caption
    def caption(self, index):
        c = _orig_cap(self, index)
        rng = _r.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index + 17)
        words = c.split()
        kept = [w for w in words if rng.random() >= WDROP]
        return " ".join(kept) if kept else c
    ImageTextDataset.caption = caption
if NNEG:
    orig_collate = loop.collate_image_text
    DS = {}
    orig_prep2 = loop._prepare
    def _prep2(cfg, resume):
        run = orig_prep2(cfg, resume); DS["ds"] = run.dataset; return run
    loop._prepare = _prep2
    def collate(items):
        b = orig_collate(items)
        ds = DS["ds"]
        b.negatives = [n for i in b.indices.tolist() for n in ds.samples[i].meta.get("negatives", [])[:NNEG]]
        return b
    loop.collate_image_text = collate

if SCALE_LR != 1.0:
    orig_groups = optim.param_groups
    def param_groups(model, wd):
        groups = orig_groups(model, wd)
        ls = [p for n, p in model.named_parameters() if n in ("logit_scale",)]
        for g in groups:
            g["params"] = [p for p in g["params"] if all(p is not q for q in ls)]
        return groups + [{"params": ls, "weight_decay": 0.0, "lr_mult": SCALE_LR}]
    optim.param_groups = param_groups
    orig_set = loop.set_lr
    def set_lr(opt_, lr):
        for g in opt_.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
    loop.set_lr = set_lr

if G:
    from sklearn.feature_extraction.text import TfidfVectorizer
    NBR = {}
    orig_prepare = loop._prepare
    def _prepare(cfg, resume, env):
        run = orig_prepare(cfg, resume, env)
        t = time.time()
        texts = [s.captions[0] for s in run.dataset.samples]
        X = TfidfVectorizer(ngram_range=(1, 2)).fit_transform(texts).astype(np.float32)
        nb = np.zeros((len(texts), K), dtype=np.int64)
        for a in range(0, len(texts), 2000):
            S = (X[a:a+2000] @ X.T).toarray()
            S[S > 0.999] = -1  # identical captions: false negatives
            nb[a:a+2000] = np.argpartition(-S, K, axis=1)[:, :K]
        NBR["nb"] = nb
        print(f"neighbours in {time.time()-t:.1f}s", file=sys.stderr)
        return run
    loop._prepare = _prepare
    class NbrSampler(loop.EpochBatchSampler):
        def __iter__(self):
            g = np.random.default_rng(self.seed * 1_000_003 + self.epoch)
            nb = NBR["nb"]
            order = g.permutation(self.n)
            for b in range(self.start, self.n // self.batch_size):
                seeds = order[b * self.batch_size:(b + 1) * self.batch_size]
                batch, seen = [], set()
                n_grouped = int(self.batch_size * FRAC)
                for s in seeds:
                    if len(batch) >= n_grouped: break
                    if s in seen: continue
                    group = [s] + [x for x in g.permutation(nb[s]) if x not in seen][: G - 1]
                    for x in group:
                        if len(batch) < n_grouped:
                            batch.append(int(x)); seen.add(int(x))
                for s in seeds:
                    if len(batch) >= self.batch_size: break
                    if int(s) not in seen:
                        batch.append(int(s)); seen.add(int(s))
                yield batch
    loop.EpochBatchSampler = NbrSampler

out = f"{RUNS}/{name}"
import shutil
shutil.rmtree(out, ignore_errors=True)
base = ["train", "--data", DATA, "--out", out, "--preset", "tiny", "--no-progress",
        "--batch-size", "128", "--max-steps", "560", "--set", "lr=2e-3", "--set", "warmup_steps=60", "--set", "weight_decay=0.1",
        "--set", "cache_images=true", "--set", "hard_negatives=true", "--set", "workers=0", "--set", "val_every=140",
        "--set", "save_every=10000", "--set", "log_every=20"]
t = time.time()
rc = cli_main(base + extra)
secs = time.time() - t
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
vals = [r for r in rows if "val_zeroshot_shape" in r]
for r in vals:
    print(name, r["step"], {k: round(v, 3) for k, v in r.items() if k.startswith("val_")})
print(name, "SECS", round(secs), "logit_scale", [r.get("logit_scale") for r in rows if "logit_scale" in r][-1:] )
