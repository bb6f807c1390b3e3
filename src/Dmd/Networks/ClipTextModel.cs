using System.Text.Json.Nodes;
using Dmd.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

// transformers' models/clip/modeling_clip.py, text side: CLIPTextModel > CLIPTextTransformer > CLIPTextEmbeddings,
// CLIPEncoder > CLIPEncoderLayer > CLIPAttention, CLIPMLP. The modules and fields carry transformers' names, so a
// text_encoder/model.safetensors (Stable Diffusion v1.5's among them) loads by name.

/// <summary>
/// The fields of transformers' <c>CLIPTextConfig</c> that shape the text encoder, read from a <c>config.json</c>;
/// a field the file lacks takes transformers' default, as <c>from_pretrained</c> does.
/// </summary>
/// <param name="VocabSize">Tokens in the vocabulary (49408 for CLIP).</param>
/// <param name="HiddenSize">Width of the token states (768 for CLIP ViT-L/14).</param>
/// <param name="IntermediateSize">Width of the MLP's hidden layer (3072).</param>
/// <param name="NumAttentionHeads">Attention heads per layer (12).</param>
/// <param name="NumHiddenLayers">Encoder layers (12).</param>
/// <param name="MaxPositionEmbeddings">Positions, the longest token sequence (77).</param>
/// <param name="HiddenAct">MLP activation: <c>quick_gelu</c> (CLIP, SD v1.5) or <c>gelu</c> (OpenCLIP, SD 2).</param>
/// <param name="LayerNormEps">Epsilon of every LayerNorm.</param>
public sealed record ClipTextConfig(
    int VocabSize = 49408,
    int HiddenSize = 512,
    int IntermediateSize = 2048,
    int NumAttentionHeads = 8,
    int NumHiddenLayers = 12,
    int MaxPositionEmbeddings = 77,
    string HiddenAct = "quick_gelu",
    double LayerNormEps = 1e-5)
{
    /// <summary>Stable Diffusion v1.5's text encoder, OpenAI's CLIP ViT-L/14 text transformer (123 M parameters).</summary>
    public static ClipTextConfig StableDiffusion15 { get; } = new(49408, 768, 3072, 12, 12, 77, "quick_gelu", 1e-5);

    /// <summary>
    /// Reads a transformers <c>config.json</c>: a <c>CLIPTextConfig</c>, or a full <c>CLIPConfig</c> whose
    /// <c>text_config</c> is used. A missing or invalid file, or an unusable value, is a <see cref="DmdInputException"/>.
    /// </summary>
    public static ClipTextConfig Load(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"{path} not found; pass the text_encoder/ folder of a Stable Diffusion model (config.json + model.safetensors)");
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new System.Text.Json.JsonException("not a JSON object"); }
        catch (System.Text.Json.JsonException e) { throw new DmdInputException($"{path} is not valid JSON ({e.Message}); use the model's own config.json", e); }
        if (json["text_config"] is JsonObject text) json = text;
        var d = new ClipTextConfig();
        int Int(string key, int fallback)
        {
            if (json[key] is null) return fallback;
            try { return json[key]!.GetValue<int>(); }
            catch (Exception e) when (e is FormatException or InvalidOperationException) { throw new DmdInputException($"{path}: {key} must be an integer, not {json[key]!.ToJsonString()}", e); }
        }
        double eps = d.LayerNormEps;
        if (json["layer_norm_eps"] is JsonValue ev && !ev.TryGetValue(out eps))
            throw new DmdInputException($"{path}: layer_norm_eps must be a number, not {ev.ToJsonString()}");
        string act = json["hidden_act"] is JsonValue av && av.TryGetValue<string>(out var a) ? a : d.HiddenAct;
        var config = new ClipTextConfig(Int("vocab_size", d.VocabSize), Int("hidden_size", d.HiddenSize), Int("intermediate_size", d.IntermediateSize),
            Int("num_attention_heads", d.NumAttentionHeads), Int("num_hidden_layers", d.NumHiddenLayers),
            Int("max_position_embeddings", d.MaxPositionEmbeddings), act, eps);
        config.Validate(path);
        return config;
    }

    /// <summary>Throws a <see cref="DmdInputException"/> naming <paramref name="source"/> when the settings cannot build a model.</summary>
    internal void Validate(string source)
    {
        if (VocabSize < 1 || HiddenSize < 1 || IntermediateSize < 1 || NumAttentionHeads < 1 || NumHiddenLayers < 0 || MaxPositionEmbeddings < 1)
            throw new DmdInputException($"{source}: sizes must be positive ({this})");
        if (HiddenSize % NumAttentionHeads != 0)
            throw new DmdInputException($"{source}: hidden_size {HiddenSize} is not a multiple of num_attention_heads {NumAttentionHeads}");
        if (HiddenAct is not ("quick_gelu" or "gelu"))
            throw new DmdInputException($"{source}: hidden_act '{HiddenAct}' is not supported; CLIP text encoders use quick_gelu or gelu");
    }
}

/// <summary>
/// transformers' <c>CLIPTextModel</c>: token and position embeddings, a pre-LayerNorm transformer encoder with causal
/// self-attention, a final LayerNorm. <c>forward(input_ids [B, L] int64)</c> returns <c>last_hidden_state</c>
/// [B, L, hidden_size], the context Stable Diffusion's U-Net cross-attends to. Parameter names are transformers'
/// (<c>text_model.embeddings.token_embedding.weight</c>, <c>text_model.encoder.layers.0.self_attn.q_proj.weight</c>,
/// ..., <c>text_model.final_layer_norm.bias</c>).
/// </summary>
public sealed class ClipTextModel : nn.Module<Tensor, Tensor>
{
    private readonly ClipTextTransformer text_model;

    /// <summary>The buffer old checkpoints (SD v1.5's among them) carry; it always holds 0..L-1 and is not loaded.</summary>
    public const string PositionIdsKey = "text_model.embeddings.position_ids";

    /// <summary>Builds the model with random weights (TorchSharp's default initialisation).</summary>
    public ClipTextModel(ClipTextConfig config) : base(nameof(ClipTextModel))
    {
        config.Validate("CLIP text config");
        Config = config;
        text_model = new ClipTextTransformer(config);
        RegisterComponents();
    }

    /// <summary>The configuration the model was built from.</summary>
    public ClipTextConfig Config { get; }

    /// <summary><c>last_hidden_state</c> [B, L, hidden_size] of token ids [B, L] (int64; L at most max_position_embeddings).</summary>
    public override Tensor forward(Tensor inputIds)
    {
        if (inputIds.dim() != 2 || inputIds.dtype is not (ScalarType.Int64 or ScalarType.Int32))
            throw new DmdInputException($"CLIP token ids must be a [batch, length] integer tensor, not {inputIds.dtype} [{string.Join(",", inputIds.shape)}]; encode prompts with ClipTokenizer.Encode");
        if (inputIds.shape[1] > Config.MaxPositionEmbeddings)
            throw new DmdInputException($"{inputIds.shape[1]} tokens exceed the text encoder's {Config.MaxPositionEmbeddings} positions; truncate the prompt (ClipTokenizer does)");
        if (inputIds.numel() > 0 && (inputIds.min().item<long>() < 0 || inputIds.max().item<long>() >= Config.VocabSize))
            throw new DmdInputException($"token ids must lie in [0, {Config.VocabSize}); use the tokenizer that belongs to this text encoder");
        return text_model.forward(inputIds.to_type(ScalarType.Int64));
    }

    /// <summary>
    /// Builds the model from a transformers folder (SD v1.5's <c>text_encoder/</c>): <c>config.json</c> and
    /// <c>model.safetensors</c>, loaded by name; the model is returned in eval mode.
    /// </summary>
    public static ClipTextModel FromFolder(string folder)
    {
        if (!Directory.Exists(folder)) throw new DmdInputException($"text encoder folder not found: {folder} (pass the text_encoder/ folder of a Stable Diffusion model)");
        var weights = Path.Combine(folder, "model.safetensors");
        if (!File.Exists(weights))
            throw new DmdInputException($"{weights} not found; a text_encoder/ folder needs model.safetensors (convert a pytorch_model.bin with safetensors' convert script)");
        var model = new ClipTextModel(ClipTextConfig.Load(Path.Combine(folder, "config.json")));
        model.LoadWeights(weights);
        model.eval();
        return model;
    }

    /// <summary>
    /// Writes a transformers <c>text_encoder/</c> folder that <see cref="FromFolder"/> and transformers' <c>CLIPTextModel.from_pretrained</c>
    /// read: <c>config.json</c> (with the tokenizer's special token ids) and <c>model.safetensors</c>.
    /// </summary>
    public void SavePretrained(string folder, int bosTokenId, int eosTokenId, int padTokenId)
    {
        Directory.CreateDirectory(folder);
        Checkpoint.SaveModule(this, Path.Combine(folder, "model.safetensors"));
        var c = Config;
        Checkpoint.SaveJson(new JsonObject
        {
            ["architectures"] = new JsonArray("CLIPTextModel"), ["model_type"] = "clip_text_model", ["attention_dropout"] = 0.0,
            ["bos_token_id"] = bosTokenId, ["eos_token_id"] = eosTokenId, ["pad_token_id"] = padTokenId, ["torch_dtype"] = "float32",
            ["hidden_size"] = c.HiddenSize, ["intermediate_size"] = c.IntermediateSize, ["num_attention_heads"] = c.NumAttentionHeads,
            ["num_hidden_layers"] = c.NumHiddenLayers, ["max_position_embeddings"] = c.MaxPositionEmbeddings, ["hidden_act"] = c.HiddenAct,
            ["layer_norm_eps"] = c.LayerNormEps, ["vocab_size"] = c.VocabSize, ["projection_dim"] = c.HiddenSize,
        }, Path.Combine(folder, "config.json"));
    }

    /// <summary>
    /// Loads a safetensors file by transformers' names. A missing, unexpected or mis-shaped tensor is one
    /// <see cref="DmdInputException"/> that names them; <see cref="PositionIdsKey"/> is ignored. Weights of another
    /// floating-point type (float16, bfloat16) are converted to the model's.
    /// </summary>
    public void LoadWeights(string path)
    {
        var report = Checkpoint.LoadModule(this, path, strict: false, ignore: new[] { PositionIdsKey });
        if (!report.IsExact)
            throw new DmdInputException($"{path} does not match the CLIP text model {Config}: {report}; use the config.json that came with the weights");
    }
}

/// <summary>transformers' <c>CLIPTextTransformer</c>: embeddings, causal encoder, final LayerNorm.</summary>
internal sealed class ClipTextTransformer : nn.Module<Tensor, Tensor>
{
    private readonly ClipTextEmbeddings embeddings;
    private readonly ClipEncoder encoder;
    private readonly LayerNorm final_layer_norm;

    public ClipTextTransformer(ClipTextConfig config) : base(nameof(ClipTextTransformer))
    {
        embeddings = new ClipTextEmbeddings(config);
        encoder = new ClipEncoder(config);
        final_layer_norm = nn.LayerNorm(config.HiddenSize, eps: config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds)
    {
        using var scope = NewDisposeScope();
        var h = embeddings.forward(inputIds);
        long n = inputIds.shape[1];
        // the causal mask: position i attends to positions 0..i (added to the attention logits)
        var mask = full(n, n, float.NegativeInfinity, dtype: h.dtype, device: h.device).triu(1);
        h = encoder.forward(h, mask);
        return final_layer_norm.forward(h).MoveToOuterDisposeScope();
    }
}

/// <summary>transformers' <c>CLIPTextEmbeddings</c>: token embedding plus learned position embedding.</summary>
internal sealed class ClipTextEmbeddings : nn.Module<Tensor, Tensor>
{
    private readonly Embedding token_embedding;
    private readonly Embedding position_embedding;

    public ClipTextEmbeddings(ClipTextConfig config) : base(nameof(ClipTextEmbeddings))
    {
        token_embedding = nn.Embedding(config.VocabSize, config.HiddenSize);
        position_embedding = nn.Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds)
    {
        using var positions = arange(inputIds.shape[1], dtype: ScalarType.Int64, device: inputIds.device);
        return token_embedding.forward(inputIds) + position_embedding.forward(positions);
    }
}

/// <summary>transformers' <c>CLIPEncoder</c>: the stack of encoder layers (<c>layers.{i}</c>).</summary>
internal sealed class ClipEncoder : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly ModuleList<ClipEncoderLayer> layers;

    public ClipEncoder(ClipTextConfig config) : base(nameof(ClipEncoder))
    {
        layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new ClipEncoderLayer(config)).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor h, Tensor mask)
    {
        foreach (var layer in layers) h = layer.forward(h, mask);
        return h;
    }
}

/// <summary>transformers' <c>CLIPEncoderLayer</c>: pre-LayerNorm residual attention, then pre-LayerNorm residual MLP.</summary>
internal sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly ClipAttention self_attn;
    private readonly LayerNorm layer_norm1;
    private readonly ClipMlp mlp;
    private readonly LayerNorm layer_norm2;

    public ClipEncoderLayer(ClipTextConfig config) : base(nameof(ClipEncoderLayer))
    {
        self_attn = new ClipAttention(config);
        layer_norm1 = nn.LayerNorm(config.HiddenSize, eps: config.LayerNormEps);
        mlp = new ClipMlp(config);
        layer_norm2 = nn.LayerNorm(config.HiddenSize, eps: config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor h, Tensor mask)
    {
        h = h + self_attn.forward(layer_norm1.forward(h), mask);
        return h + mlp.forward(layer_norm2.forward(h));
    }
}

/// <summary>
/// transformers' <c>CLIPAttention</c> (eager): separate q/k/v projections, softmax(q k^T / sqrt(head_dim) + mask) v per
/// head, output projection.
/// </summary>
internal sealed class ClipAttention : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly Linear q_proj, k_proj, v_proj, out_proj;
    private readonly long heads;

    public ClipAttention(ClipTextConfig config) : base(nameof(ClipAttention))
    {
        heads = config.NumAttentionHeads;
        k_proj = nn.Linear(config.HiddenSize, config.HiddenSize);
        v_proj = nn.Linear(config.HiddenSize, config.HiddenSize);
        q_proj = nn.Linear(config.HiddenSize, config.HiddenSize);
        out_proj = nn.Linear(config.HiddenSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor mask)
    {
        long b = x.shape[0], n = x.shape[1], c = x.shape[2], d = c / heads;
        Tensor Heads(Tensor t) => t.view(b, n, heads, d).transpose(1, 2);  // [B, heads, L, d]
        var q = Heads(q_proj.forward(x));
        var k = Heads(k_proj.forward(x));
        var v = Heads(v_proj.forward(x));
        var weights = (q.matmul(k.transpose(-1, -2)) * Math.Pow(d, -0.5) + mask).softmax(-1);
        var y = weights.matmul(v).transpose(1, 2).reshape(b, n, c);
        return out_proj.forward(y);
    }
}

/// <summary>transformers' <c>CLIPMLP</c>: fc1, activation (quick_gelu <c>x sigmoid(1.702 x)</c> or gelu), fc2.</summary>
internal sealed class ClipMlp : nn.Module<Tensor, Tensor>
{
    private readonly Linear fc1, fc2;
    private readonly bool quickGelu;

    public ClipMlp(ClipTextConfig config) : base(nameof(ClipMlp))
    {
        fc1 = nn.Linear(config.HiddenSize, config.IntermediateSize);
        fc2 = nn.Linear(config.IntermediateSize, config.HiddenSize);
        quickGelu = config.HiddenAct == "quick_gelu";
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = fc1.forward(x);
        h = quickGelu ? h * (h * 1.702).sigmoid() : nn.functional.gelu(h);
        return fc2.forward(h);
    }
}
