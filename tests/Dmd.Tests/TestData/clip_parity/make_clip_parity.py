"""Regenerates the CLIP text-side fixtures of this folder: a toy tokenizer, a tiny text encoder, the reference's
outputs, and the parameter list of Stable Diffusion v1.5's text encoder (see README.md).

    /usr/bin/python3 make_clip_parity.py --transformers /path/to/transformers/src/transformers --clip /path/to/CLIP

--transformers is the src/transformers folder of huggingface/transformers; only three of its files are read, as they
are: models/clip/tokenization_clip.py (CLIPTokenizer), models/clip/modeling_clip.py (CLIPTextModel) and
tokenization_utils.py (the character classes _is_control, _is_whitespace, _is_punctuation, taken out of the file by
name). Their package imports (hub, config, output classes, attention registry, the tokenizer base class) are replaced
by the small stubs below. --clip is a checkout of openai/CLIP, whose clip/model.py (the original text transformer,
with its own causal mask, QuickGELU and LayerNorm) computes the same outputs as a cross-check of the stubs.

Needs torch, numpy and regex (Debian 12: python3-torch 1.13, python3-numpy, python3-regex). Without ftfy, as here,
transformers' CLIPTokenizer cleans text with its BasicTokenizer (control characters dropped, whitespace collapsed,
CJK characters split, NFC, lowercase): that is the behaviour the fixtures record.

Writes, beside this script:
  tokenizer/            vocab.json, merges.txt (a toy CLIP vocabulary: 256 byte symbols, their </w> forms, MERGES
                        BPE merges learnt on CORPUS, the two special tokens, in CLIP's order), tokenizer_config.json
                        and special_tokens_map.json (SD v1.5's settings: pad "<|endoftext|>", model_max_length 77)
  tokenizer_cases.json  [{"prompt": ..., "ids": [77 ints]}]: CLIPTokenizer(prompt, padding="max_length",
                        max_length=77, truncation=True).input_ids for every prompt of prompts()
  text_encoder/         config.json (CLIPTextConfig fields), model.safetensors: a random tiny CLIPTextModel under
                        transformers' names, plus text_model.embeddings.position_ids as old checkpoints (SD v1.5's
                        among them) carry it
  text_encoder_io.safetensors  io.input_ids (4, 77) int64 from the tokenizer, io.last_hidden_state (4, 77, 64),
                        io.pooler_output (4, 64)
  sd15_text_encoder_params.txt  "name shape" of every tensor in CLIPTextModel(SD v1.5's config).state_dict()

Every random value comes from torch's CPU generator seeded with SEED; the output is float32 CPU arithmetic, which can
differ between CPUs in the last bits (~1e-7; the tests allow 2e-5). The script checks the transformers model against
openai/CLIP's and against itself in float64.
"""
import argparse
import ast
import collections
import importlib
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tools"))
from safetensors_io import save_safetensors  # noqa: E402  (the repository's one safetensors writer)

SEED = 2024
MERGES = 400
TINY = dict(vocab_size=None, hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
SD15 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CORPUS = """
a photograph of an astronaut riding a horse on the moon, highly detailed, 4k, trending on artstation
a painting of a fox sitting in a field at sunrise in the style of claude monet, oil on canvas
portrait of a beautiful woman with long red hair, studio lighting, sharp focus, bokeh, 85mm photography
a cute cat wearing a tiny hat, digital art, concept art, illustration, unreal engine, octane render
the city of tokyo at night with neon lights and rain, cyberpunk, cinematic, dramatic lighting
an old man reading a book in a cozy library, warm colours, by greg rutkowski and alphonse mucha
a bowl of fruit on a wooden table, still life, realistic, photorealistic, high resolution, masterpiece
a castle on a hill above the sea, fantasy landscape, matte painting, epic composition, volumetric light
a dog running on the beach, it's a sunny day, they're happy, we'll see, i'd like that, you've been there
café crème brûlée naïve résumé über straße zürich ångström piñata façade déjà vu élève
"""


# ----------------------------------------------------------------------------------------------------------------------
# Stubs of the transformers package around the three reference files.

STUBS = {
    "__init__.py": "",
    "models/__init__.py": "",
    "models/clip/__init__.py": "",
    "utils/__init__.py": '''
import logging as _logging
logging = types_logging = type("logging", (), {"get_logger": staticmethod(_logging.getLogger)})
class ModelOutput:
    def __init__(self, **kw): self.__dict__.update(kw)
class TransformersKwargs(dict): pass
def auto_docstring(obj=None, **kw): return obj if obj is not None else (lambda f: f)
def can_return_tuple(f): return f
def filter_out_non_signature_kwargs(*a, **kw): return lambda f: f
def torch_int(x): return int(x)
''',
    "utils/generic.py": "def check_model_inputs(*a, **kw): return lambda f: f\n",
    "processing_utils.py": "class Unpack:\n    def __class_getitem__(cls, item): return item\n",
    "modeling_layers.py": "from torch import nn\nGradientCheckpointingLayer = nn.Module\n",
    "modeling_outputs.py": '''
from .utils import ModelOutput
class BaseModelOutput(ModelOutput): pass
class BaseModelOutputWithPooling(ModelOutput): pass
class ImageClassifierOutput(ModelOutput): pass
''',
    "modeling_utils.py": '''
from torch import nn
ALL_ATTENTION_FUNCTIONS = {}
class PreTrainedModel(nn.Module):
    def __init__(self, config, *a, **kw):
        super().__init__()
        self.config = config
    def post_init(self): pass
''',
    # the eager causal mask of transformers' masking_utils: 0 on and below the diagonal, dtype's min above it
    "masking_utils.py": '''
import torch
def create_causal_mask(config, input_embeds, attention_mask, cache_position, past_key_values, **kw):
    n = input_embeds.shape[1]
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    mask = torch.zeros(n, n, dtype=input_embeds.dtype).masked_fill(upper, torch.finfo(input_embeds.dtype).min)
    return mask[None, None].expand(input_embeds.shape[0], 1, n, n)
''',
    "activations.py": "",  # written in load_reference(): ACT2FN["quick_gelu"] is openai/CLIP's QuickGELU, the same function
    "models/clip/configuration_clip.py": '''
class CLIPTextConfig:
    _attn_implementation = "eager"
    attention_dropout = 0.0
    eos_token_id = 2
    def __init__(self, **kw): self.__dict__.update(kw)
CLIPConfig = CLIPVisionConfig = CLIPTextConfig
''',
    # the slow-tokenizer base class, reduced to what CLIPTokenizer uses: special tokens split off the text first (the
    # added-token split of PreTrainedTokenizer.tokenize, no stripping as CLIP's AddedTokens ask), _tokenize on the
    # rest, ids through the vocabulary, then truncation to max_length with the special tokens kept and right padding.
    "tokenization_utils.py": '''
from ._char_classes import _is_control, _is_punctuation, _is_whitespace
class AddedToken(str):
    def __new__(cls, content, **kw): return str.__new__(cls, content)
class PreTrainedTokenizer:
    def __init__(self, bos_token, eos_token, unk_token, pad_token, model_max_length=77, **kw):
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = map(str, (bos_token, eos_token, unk_token, pad_token))
        self.model_max_length = model_max_length
        self.added_tokens_encoder = {}
    bos_token_id = property(lambda self: self._convert_token_to_id(self.bos_token))
    eos_token_id = property(lambda self: self._convert_token_to_id(self.eos_token))
    pad_token_id = property(lambda self: self._convert_token_to_id(self.pad_token))
    def tokenize(self, text):
        pieces = [text]
        for special in (self.bos_token, self.eos_token):
            split = []
            for p in pieces:
                for i, s in enumerate([p] if p in (self.bos_token, self.eos_token) else p.split(special)):
                    split += [special, s] if i else [s]
            pieces = split
        out = []
        for p in pieces:
            out += [p] if p in (self.bos_token, self.eos_token) else self._tokenize(p)
        return out
    def __call__(self, text, padding="max_length", max_length=None, truncation=True):
        max_length = max_length or self.model_max_length
        ids = [self._convert_token_to_id(t) for t in self.tokenize(text)]
        if truncation: ids = ids[: max_length - 2]
        ids = self.build_inputs_with_special_tokens(ids)
        return ids + [self.pad_token_id] * (max_length - len(ids))
''',
}


def load_reference(transformers_dir, clip_dir):
    """Imports the reference files as package `transformers` (stubbed around them) and openai/CLIP's clip.model."""
    root = tempfile.mkdtemp(prefix="clip_ref_")
    pkg = os.path.join(root, "transformers")
    for rel, text in STUBS.items():
        os.makedirs(os.path.dirname(os.path.join(pkg, rel)), exist_ok=True)
        with open(os.path.join(pkg, rel), "w") as f:
            f.write(text)
    spec = importlib.util.spec_from_file_location("openai_clip_model", os.path.join(clip_dir, "clip", "model.py"))
    openai_model = sys.modules["openai_clip_model"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(openai_model)  # clip/model.py alone: clip/__init__.py would need PIL and torchvision
    with open(os.path.join(pkg, "activations.py"), "w") as f:
        f.write("import sys\nACT2FN = {'quick_gelu': sys.modules['openai_clip_model'].QuickGELU()}\n")
    # the three character classes, taken by name out of transformers' tokenization_utils.py
    with open(os.path.join(transformers_dir, "tokenization_utils.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_is_control", "_is_whitespace", "_is_punctuation")]
    assert len(wanted) == 3, "tokenization_utils.py lacks _is_control/_is_whitespace/_is_punctuation"
    with open(os.path.join(pkg, "_char_classes.py"), "w", encoding="utf-8") as f:
        f.write("import unicodedata\n\n" + "\n\n".join(ast.unparse(n) for n in wanted) + "\n")
    for rel in ("models/clip/tokenization_clip.py", "models/clip/modeling_clip.py"):
        shutil.copy(os.path.join(transformers_dir, rel), os.path.join(pkg, rel))
    sys.path.insert(0, root)
    tok = importlib.import_module("transformers.models.clip.tokenization_clip")
    mod = importlib.import_module("transformers.models.clip.modeling_clip")
    cfg = importlib.import_module("transformers.models.clip.configuration_clip")
    return tok, mod, cfg, openai_model


# ----------------------------------------------------------------------------------------------------------------------
# A toy CLIP vocabulary, built as CLIP's is: byte symbols, their end-of-word forms, the merges, the special tokens.

def build_vocab(tok, out_dir):
    byte_encoder = tok.bytes_to_unicode()
    pat = __import__("regex").compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    words = collections.Counter()
    for w in pat.findall(CORPUS.lower()):
        sym = [byte_encoder[b] for b in w.encode("utf-8")]
        sym[-1] += "</w>"
        words[tuple(sym)] += 1
    merges = []
    for _ in range(MERGES):
        pairs = collections.Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # most frequent, ties broken by the pair itself
        merges.append(best)
        merged = collections.Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    vocab = list(byte_encoder.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab), "a merge repeated a token"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = lambda s: {"content": s, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:  # SD v1.5's tokenizer/special_tokens_map.json
        json.dump({"bos_token": special("<|startoftext|>"), "eos_token": special("<|endoftext|>"),
                   "pad_token": "<|endoftext|>", "unk_token": special("<|endoftext|>")}, f, indent=2)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:  # SD v1.5's tokenizer/tokenizer_config.json
        json.dump({"add_prefix_space": False, "bos_token": special("<|startoftext|>"), "do_lower_case": True,
                   "eos_token": special("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
                   "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
                   "unk_token": special("<|endoftext|>")}, f, indent=2)
    return len(vocab), len(merges)


def prompts():
    """Hand-picked edge cases plus prompts drawn from word lists (fixed seed): a few hundred in all."""
    fixed = [
        "", " ", "   \t\n  ", "a", "A", "cat", "a photo of a cat", "A Photo Of A CAT", "a  photo   of\ta\ncat ",
        "  leading and trailing spaces  ", "it's", "It's a dog's life, isn't it? They're here; we'll go; I'd say; you've; I'm",
        "don't won't can't shouldn't", "'s 't 're 've 'm 'll 'd", "''''", "rock'n'roll", "o'clock", "l'été",
        "hello, world!", "wow!!! really??? ...", "a,b;c:d.e", "(parentheses) [brackets] {braces} <angles>",
        "#hashtag @mention $100 50% a&b a*b a+b=c ~tilde `backtick` ^caret |pipe| \\backslash/",
        "--- *** ___ ... ,,, !!!", "masterpiece, best quality, (ultra detailed:1.2), [blurry]",
        "1", "42", "2024", "3.14159", "1,000,000", "4k 8k 1080p 35mm f/1.8", "007 agent", "v1.5",
        "café", "naïve", "résumé", "crème brûlée", "Zürich", "Ångström", "piñata", "façade", "DÉJÀ VU", "élève",
        "cafe\u0301 (combining accent)", "e\u0301e\u0300e\u0302", "straße STRASSE", "ﬁne ﬂower (ligatures)",
        "İstanbul", "ΟΔΟΣ οδός Σίσυφος ΣΑΣ", "Москва и Санкт-Петербург", "Ελληνικά γράμματα", "עברית", "العربية",
        "हिन्दी", "ไทย", "한국어 텍스트", "日本語のテキスト", "カタカナ", "中文文本", "汉字和English混合", "𠀀𠀁 (CJK ext B)",
        "𝐁𝐨𝐥𝐝 math letters", "𐐀𐐁 deseret", "Ａ Ｂ Ｃ fullwidth １２３", "①②③ circled", "Ⅻ roman", "½ ¾ fractions",
        "😀", "a cat 🐱 and a dog 🐶", "👍🏽 thumbs", "👨\u200d👩\u200d👧 family", "🇫🇷 flag", "❤️ love", "★☆✓✗",
        "zero\u200bwidth", "soft\u00adhyphen", "nul\x00char", "bell\x07char", "replacement\ufffdchar", "non\u00a0breaking",
        "ideographic\u3000space", "line\u2028separator", "em\u2003space", "tab\there", "cr\rlf\n",
        "&amp; &lt;b&gt; &#39;", "“curly quotes” and ‘single’", "em—dash – en dash … ellipsis", "«guillemets» „low“",
        "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "a<|startoftext|>b<|endoftext|>c", "!<|endoftext|>!",
        "<|ENDOFTEXT|>", "<|endoftext", "|endoftext|>", "<|startoftext|><|endoftext|>",
        "http://example.com/path?query=1&b=2", "user@example.com", "C:\\path\\to\\file.txt", "snake_case_name camelCaseName",
        "x" * 300, "ab" * 60, " ".join(["word"] * 100), " ".join(["a"] * 76), " ".join(["a"] * 75), " ".join(["a"] * 74),
        ", ".join(["highly detailed"] * 30), "!" * 200, "🐱" * 40, "é" * 100,
    ]
    rng = random.Random(SEED)
    words = CORPUS.split() + ["Zebra", "QUICK", "brown", "jumps", "over", "lazy", "don't", "x2", "3d", "hi-res",
                              "mañana", "Œuvre", "æsthetic", "ðe", "þorn", "ÿ", "ı", "ǅ", "ﬀ", "µ", "ß", "Σ", "ς",
                              "ΣΑΣ", "мир", "東京", "🌸", "🏔️", "™", "©", "°C", "→", "∞", "≈", "±", "×", "÷"]
    seps = [" ", " ", " ", "  ", ", ", ". ", "! ", "? ", "; ", "-", "\t", "\n", " - ", "/"]
    drawn = []
    for k in range(260):
        n = rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 90])
        s = "".join(rng.choice(words) + rng.choice(seps) for _ in range(n))
        if k % 7 == 0:
            s = s.upper()
        drawn.append(s.strip() if k % 3 else s)
    return fixed + drawn


# ----------------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transformers", required=True, help="src/transformers of huggingface/transformers")
    ap.add_argument("--clip", required=True, help="checkout of openai/CLIP (for the cross-check)")
    ap.add_argument("--out", default=HERE, help="folder to write into")
    a = ap.parse_args()
    tok_mod, mod, cfg_mod, openai_model = load_reference(os.path.abspath(a.transformers), os.path.abspath(a.clip))
    global torch
    import torch
    torch.set_num_threads(1)
    try:
        import ftfy  # noqa: F401
        sys.exit("ftfy is installed: transformers' CLIPTokenizer would use it instead of the BasicTokenizer these fixtures record")
    except ImportError:
        pass

    # Tokenizer.
    tok_dir = os.path.join(a.out, "tokenizer")
    n_vocab, n_merges = build_vocab(tok_mod, tok_dir)
    tokenizer = tok_mod.CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"), model_max_length=77)
    cases = [{"prompt": p, "ids": tokenizer(p, padding="max_length", max_length=77, truncation=True)} for p in prompts()]
    assert all(len(c["ids"]) == 77 for c in cases)
    with open(os.path.join(a.out, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=True) for c in cases) + "\n]\n")
    print(f"tokenizer: {n_vocab} tokens ({n_merges} merges), {len(cases)} prompts")

    # Tiny text encoder with random weights under transformers' names.
    config = dict(TINY, vocab_size=n_vocab)
    torch.manual_seed(SEED)
    model = mod.CLIPTextModel(cfg_mod.CLIPTextConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm1.weight") or name.endswith("layer_norm2.weight") or name.endswith("final_layer_norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape))
            elif "embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) / p.shape[1] ** 0.5)
    input_ids = torch.tensor([c["ids"] for c in cases if c["prompt"] in
                              ("a photo of a cat", "It's a dog's life, isn't it? They're here; we'll go; I'd say; you've; I'm",
                               "café", ", ".join(["highly detailed"] * 30))], dtype=torch.int64)
    assert input_ids.shape == (4, 77)
    with torch.no_grad():
        out = model(input_ids=input_ids)
        last, pooled = out.last_hidden_state, out.pooler_output
        ref64 = mod.CLIPTextModel(cfg_mod.CLIPTextConfig(**config))
        ref64.load_state_dict(model.state_dict())
        last64 = ref64.double().eval()(input_ids=input_ids).last_hidden_state
    err64 = (last.double() - last64).abs().max().item()
    assert err64 < 1e-5, f"float32 and float64 outputs differ by {err64}"

    # Cross-check: openai/CLIP's text transformer with the same weights (q, k, v stacked into in_proj).
    clip = openai_model.CLIP(embed_dim=32, image_resolution=16, vision_layers=1, vision_width=64, vision_patch_size=8,
                             context_length=77, vocab_size=n_vocab, transformer_width=64, transformer_heads=2,
                             transformer_layers=2).eval()
    sd = model.state_dict()
    with torch.no_grad():
        clip.token_embedding.weight.copy_(sd["text_model.embeddings.token_embedding.weight"])
        clip.positional_embedding.copy_(sd["text_model.embeddings.position_embedding.weight"])
        clip.ln_final.weight.copy_(sd["text_model.final_layer_norm.weight"])
        clip.ln_final.bias.copy_(sd["text_model.final_layer_norm.bias"])
        for i, blk in enumerate(clip.transformer.resblocks):
            p = f"text_model.encoder.layers.{i}."
            blk.attn.in_proj_weight.copy_(torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]))
            blk.attn.in_proj_bias.copy_(torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"]))
            blk.attn.out_proj.weight.copy_(sd[p + "self_attn.out_proj.weight"])
            blk.attn.out_proj.bias.copy_(sd[p + "self_attn.out_proj.bias"])
            for ours, theirs in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                blk.get_submodule(theirs).weight.copy_(sd[p + ours + ".weight"])
                blk.get_submodule(theirs).bias.copy_(sd[p + ours + ".bias"])
        captured = {}
        clip.ln_final.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
        clip.encode_text(input_ids)
    err_openai = (captured["x"] - last).abs().max().item()
    assert err_openai < 1e-5, f"transformers and openai/CLIP differ by {err_openai}"

    enc_dir = os.path.join(a.out, "text_encoder")
    os.makedirs(enc_dir, exist_ok=True)
    with open(os.path.join(enc_dir, "config.json"), "w") as f:
        json.dump({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
                   "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32", **config}, f, indent=2)
    weights = dict(sd)
    weights["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_safetensors(weights, os.path.join(enc_dir, "model.safetensors"))
    save_safetensors({"io.input_ids": input_ids, "io.last_hidden_state": last.contiguous(), "io.pooler_output": pooled.contiguous()},
                     os.path.join(a.out, "text_encoder_io.safetensors"))
    print(f"text encoder: {sum(p.numel() for p in model.parameters())} parameters, |last_hidden_state| max "
          f"{last.abs().max():.3f}, float32 vs float64 {err64:.1e}, vs openai/CLIP {err_openai:.1e}")

    # SD v1.5's text encoder: the names and shapes of its state_dict.
    sd15 = mod.CLIPTextModel(cfg_mod.CLIPTextConfig(**SD15)).state_dict()
    with open(os.path.join(a.out, "sd15_text_encoder_params.txt"), "w") as f:
        f.write("".join(f"{k} {','.join(map(str, v.shape))}\n" for k, v in sd15.items()))
    print(f"sd15: {len(sd15)} tensors, {sum(v.numel() for v in sd15.values())} values")


if __name__ == "__main__":
    main()
