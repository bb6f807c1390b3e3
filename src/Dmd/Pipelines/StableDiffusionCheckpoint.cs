using System.Collections;
using System.Text.RegularExpressions;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// Where the parts a single-file checkpoint does not hold come from (<see cref="StableDiffusion.LoadSingleFile"/>).
/// A single file holds the three networks' weights only: no tokenizer, no configs, no scheduler.
/// </summary>
public sealed record SingleFileOptions
{
    /// <summary>
    /// A diffusers Stable Diffusion folder whose <c>unet/</c>, <c>vae/</c>, <c>text_encoder/</c> config.json files,
    /// <c>tokenizer/</c> and <c>scheduler/</c> are used, its weights not read (diffusers' <c>from_single_file(config=...)</c>);
    /// null: SD v1.x's architecture, read off the tensors' shapes, and SD v1.5's scheduler.
    /// </summary>
    public string? ConfigFolder { get; init; }

    /// <summary>A CLIP tokenizer folder (<c>vocab.json</c>, <c>merges.txt</c>); needed when there is no <see cref="ConfigFolder"/>.</summary>
    public string? TokenizerFolder { get; init; }
}

/// <summary>
/// Stable Diffusion v1.x's single-file checkpoint, the original CompVis/LDM layout (<c>v1-5-pruned-emaonly.safetensors</c>
/// or <c>.ckpt</c>): the UNet under <c>model.diffusion_model.</c> (<c>input_blocks</c>, <c>middle_block</c>,
/// <c>output_blocks</c>, ...), the VAE under <c>first_stage_model.</c> (<c>encoder.down.i.block.j</c>, <c>mid.attn_1</c>
/// with 1x1-convolution projections, ...), the CLIP text encoder under <c>cond_stage_model.transformer.</c> (transformers'
/// own names). Each network's diffusers parameter name is mapped to its single-file name (<see cref="UnetName"/>,
/// <see cref="VaeName"/>) as diffusers' <c>from_single_file</c> maps them back; the architecture is read off the tensors'
/// shapes (<see cref="InferUnetConfig"/>, ...) or taken from a diffusers folder's configs.
/// </summary>
public static class StableDiffusionCheckpoint
{
    /// <summary>Prefix of the UNet's tensors.</summary>
    public const string UnetPrefix = "model.diffusion_model.";
    /// <summary>Prefix of the VAE's tensors.</summary>
    public const string VaePrefix = "first_stage_model.";
    /// <summary>Prefix of the CLIP text encoder's tensors (then transformers' names, <c>text_model.</c>...).</summary>
    public const string TextPrefix = "cond_stage_model.transformer.";

    /// <summary>
    /// Every tensor of a single-file checkpoint: safetensors, or a PyTorch zip pickle (<c>.ckpt</c>, <c>.pt</c>, <c>.pth</c>,
    /// the tensors under <c>state_dict</c> as PyTorch Lightning saves them, or at the top level). An unreadable file is a
    /// one-line <see cref="DmdInputException"/>.
    /// </summary>
    public static Dictionary<string, Tensor> Read(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"checkpoint file not found: {path}");
        bool pickle = path.EndsWith(".ckpt", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".pt", StringComparison.OrdinalIgnoreCase)
                      || path.EndsWith(".pth", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase);
        if (!pickle) return Checkpoint.LoadTensors(path);
        Hashtable top;
        try
        {
            using var stream = File.OpenRead(path);
            top = PyTorchUnpickler.UnpickleStateDict(stream);
        }
        catch (Exception e) when (e is not DmdInputException)
        {
            throw new DmdInputException($"{path} is not a readable PyTorch checkpoint ({e.Message}); convert it to safetensors (the format SD v1.5 is also published in)", e);
        }
        var dict = top["state_dict"] as Hashtable ?? top;
        var tensors = new Dictionary<string, Tensor>();
        foreach (DictionaryEntry e in dict)
            if (e.Key is string k && e.Value is Tensor t) tensors[k] = t;
        if (tensors.Count == 0) throw new DmdInputException($"{path} holds no tensors (neither under state_dict nor at the top level)");
        return tensors;
    }

    /// <summary>The single-file name (after <see cref="UnetPrefix"/>) of a diffusers UNet parameter.</summary>
    public static string UnetName(string name, UNet2DConditionConfig c)
    {
        int l = c.LayersPerBlock;
        foreach (var (from, to) in UnetFixed)
            if (name.StartsWith(from, StringComparison.Ordinal)) return to + name[from.Length..];
        Match m;
        if ((m = Regex.Match(name, @"^mid_block\.resnets\.(\d)\.(\w+)\.(.*)$")).Success)
            return $"middle_block.{2 * Int(m, 1)}.{Resnet(m.Groups[2].Value, name)}.{m.Groups[3].Value}";
        if ((m = Regex.Match(name, @"^down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)$")).Success)
            return $"input_blocks.{1 + Int(m, 1) * (l + 1) + Int(m, 2)}.0.{Resnet(m.Groups[3].Value, name)}.{m.Groups[4].Value}";
        if ((m = Regex.Match(name, @"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")).Success)
            return $"input_blocks.{1 + Int(m, 1) * (l + 1) + Int(m, 2)}.1.{m.Groups[3].Value}";
        if ((m = Regex.Match(name, @"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$")).Success)
            return $"input_blocks.{(Int(m, 1) + 1) * (l + 1)}.0.op.{m.Groups[2].Value}";
        if ((m = Regex.Match(name, @"^up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)$")).Success)
            return $"output_blocks.{Int(m, 1) * (l + 1) + Int(m, 2)}.0.{Resnet(m.Groups[3].Value, name)}.{m.Groups[4].Value}";
        if ((m = Regex.Match(name, @"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")).Success)
            return $"output_blocks.{Int(m, 1) * (l + 1) + Int(m, 2)}.1.{m.Groups[3].Value}";
        if ((m = Regex.Match(name, @"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$")).Success)
        {
            int i = Int(m, 1);
            // the upsampler follows the level's last resnet, and its attention where the level has one
            return $"output_blocks.{i * (l + 1) + l}.{(c.UpBlockTypes[i] == "CrossAttnUpBlock2D" ? 2 : 1)}.conv.{m.Groups[2].Value}";
        }
        throw new InvalidOperationException($"no single-file name for the UNet parameter {name}");
    }

    /// <summary>The single-file name (after <see cref="VaePrefix"/>) of a diffusers VAE parameter.</summary>
    public static string VaeName(string name, AutoencoderKLConfig c)
    {
        int n = c.BlockOutChannels.Length;
        Match m;
        if ((m = Regex.Match(name, @"^(encoder|decoder)\.conv_norm_out\.(.*)$")).Success)
            return $"{m.Groups[1].Value}.norm_out.{m.Groups[2].Value}";
        if ((m = Regex.Match(name, @"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$")).Success)
            return $"{m.Groups[1].Value}.mid.block_{Int(m, 2) + 1}.{m.Groups[3].Value}";
        if ((m = Regex.Match(name, @"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$")).Success)
            return $"{m.Groups[1].Value}.mid.attn_1.{VaeAttention[m.Groups[2].Value]}.{m.Groups[3].Value}";
        if ((m = Regex.Match(name, @"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$")).Success)
            return $"encoder.down.{m.Groups[1].Value}.block.{m.Groups[2].Value}.{Shortcut(m.Groups[3].Value)}";
        if ((m = Regex.Match(name, @"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$")).Success)
            return $"encoder.down.{m.Groups[1].Value}.downsample.conv.{m.Groups[2].Value}";
        if ((m = Regex.Match(name, @"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$")).Success)
            return $"decoder.up.{n - 1 - Int(m, 1)}.block.{m.Groups[2].Value}.{Shortcut(m.Groups[3].Value)}";   // the original counts up levels from the top
        if ((m = Regex.Match(name, @"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$")).Success)
            return $"decoder.up.{n - 1 - Int(m, 1)}.upsample.conv.{m.Groups[2].Value}";
        if (Regex.IsMatch(name, @"^(encoder|decoder)\.(conv_in|conv_out)\.|^(post_)?quant_conv\.")) return name;
        throw new InvalidOperationException($"no single-file name for the VAE parameter {name}");
    }

    /// <summary>
    /// SD v1.x's UNet config read off the single-file tensors' shapes: input channels and widths from the convolutions,
    /// layers per block and levels from the block indices, attention levels from where attention blocks exist, the text
    /// width from the cross-attention keys. Not in the weights, so SD v1.x's: 8 heads (the original config's
    /// <c>num_heads</c>), 32 GroupNorm groups, sample size 64. A file of another family (SD 2.x's linear projections,
    /// several transformer layers, class embeddings) is a one-line <see cref="DmdInputException"/>.
    /// </summary>
    public static UNet2DConditionConfig InferUnetConfig(IReadOnlyDictionary<string, Tensor> file, string source = "checkpoint")
    {
        var convIn = Shape(file, UnetPrefix + "input_blocks.0.0.weight", source);
        int count = Indices(file, UnetPrefix + "input_blocks.").Max() + 1;
        int firstDown = Enumerable.Range(1, count - 1).FirstOrDefault(k => file.ContainsKey($"{UnetPrefix}input_blocks.{k}.0.op.weight"));
        int l = firstDown == 0 ? count - 1 : firstDown - 1;   // one level: no downsampler
        if (l < 1 || count % (l + 1) != 0) throw new DmdInputException($"{source}: {count} UNet input blocks do not make levels of {l} resnets and a downsampler; not a Stable Diffusion UNet");
        int n = count / (l + 1);
        var widths = new int[n];
        var down = new string[n];
        for (int i = 0; i < n; i++)
        {
            int k = 1 + i * (l + 1);
            widths[i] = (int)Shape(file, $"{UnetPrefix}input_blocks.{k}.0.out_layers.3.weight", source)[0];
            down[i] = file.ContainsKey($"{UnetPrefix}input_blocks.{k}.1.proj_in.weight") ? "CrossAttnDownBlock2D" : "DownBlock2D";
        }
        var projIn = file.Keys.FirstOrDefault(k => k.StartsWith(UnetPrefix, StringComparison.Ordinal) && k.EndsWith(".proj_in.weight", StringComparison.Ordinal));
        if (projIn is not null && file[projIn].dim() == 2)
            throw new DmdInputException($"{source}: the UNet's attention uses linear projections (Stable Diffusion 2.x); only SD v1.x single files are implemented (load a diffusers folder of it instead)");
        if (file.Keys.Any(k => k.StartsWith(UnetPrefix, StringComparison.Ordinal) && k.Contains(".transformer_blocks.1.", StringComparison.Ordinal)))
            throw new DmdInputException($"{source}: the UNet has several transformer layers per attention block (SDXL-style); only SD v1.x single files are implemented");
        if (file.Keys.Any(k => k.StartsWith(UnetPrefix + "label_emb.", StringComparison.Ordinal)))
            throw new DmdInputException($"{source}: the UNet has class/size embeddings (label_emb: SDXL or an upscaler); only SD v1.x single files are implemented");
        var toK = file.Keys.FirstOrDefault(k => k.StartsWith(UnetPrefix, StringComparison.Ordinal) && k.EndsWith(".attn2.to_k.weight", StringComparison.Ordinal))
                  ?? throw new DmdInputException($"{source}: the UNet has no cross-attention (attn2.to_k); not a text-to-image Stable Diffusion checkpoint");
        var config = new UNet2DConditionConfig
        {
            InChannels = (int)convIn[1],
            OutChannels = (int)Shape(file, UnetPrefix + "out.2.weight", source)[0],
            BlockOutChannels = widths,
            DownBlockTypes = down,
            UpBlockTypes = down.Reverse().Select(t => t == "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D").ToArray(),
            LayersPerBlock = l,
            AttentionHeads = Enumerable.Repeat(8, n).ToArray(),
            CrossAttentionDim = (int)file[toK].shape[1],
        };
        Inferred(() => config.Validate(source));
        return config;
    }

    /// <summary>
    /// SD v1.x's VAE config read off the shapes (widths, resnets per level, latent and image channels); not in the weights,
    /// so SD's: 32 GroupNorm groups, scaling factor 0.18215, sample size 512.
    /// </summary>
    public static AutoencoderKLConfig InferVaeConfig(IReadOnlyDictionary<string, Tensor> file, string source = "checkpoint")
    {
        var convIn = Shape(file, VaePrefix + "encoder.conv_in.weight", source);
        int n = Indices(file, VaePrefix + "encoder.down.").Max() + 1;
        int l = Indices(file, VaePrefix + "encoder.down.0.block.").Max() + 1;
        var config = new AutoencoderKLConfig
        {
            InChannels = (int)convIn[1],
            OutChannels = (int)Shape(file, VaePrefix + "decoder.conv_out.weight", source)[0],
            LatentChannels = (int)Shape(file, VaePrefix + "post_quant_conv.weight", source)[0],
            BlockOutChannels = Enumerable.Range(0, n).Select(i => (int)Shape(file, $"{VaePrefix}encoder.down.{i}.block.0.conv2.weight", source)[0]).ToArray(),
            LayersPerBlock = l,
        };
        Inferred(() => config.Validate(source));
        return config;
    }

    /// <summary>
    /// The CLIP text encoder's config read off the shapes (vocabulary, width, MLP width, layers, positions); heads of 64
    /// channels and quick_gelu as OpenAI's CLIP (ViT-L/14: 768 wide, 12 heads). An OpenCLIP text encoder (SD 2.x,
    /// <c>cond_stage_model.model.</c>) or SDXL's two is a one-line <see cref="DmdInputException"/>.
    /// </summary>
    public static ClipTextConfig InferTextConfig(IReadOnlyDictionary<string, Tensor> file, string source = "checkpoint")
    {
        if (file.Keys.Any(k => k.StartsWith("cond_stage_model.model.", StringComparison.Ordinal) || k.StartsWith("conditioner.", StringComparison.Ordinal)))
            throw new DmdInputException($"{source}: the text encoder is OpenCLIP's (Stable Diffusion 2.x or SDXL); only SD v1.x single files (CLIP ViT-L/14) are implemented");
        var tok = Shape(file, TextName(file, "text_model.embeddings.token_embedding.weight"), source);
        int hidden = (int)tok[1];
        var config = new ClipTextConfig(
            VocabSize: (int)tok[0], HiddenSize: hidden,
            IntermediateSize: (int)Shape(file, TextName(file, "text_model.encoder.layers.0.mlp.fc1.weight"), source)[0],
            NumAttentionHeads: Math.Max(1, hidden / 64),
            NumHiddenLayers: Indices(file, TextName(file, "text_model.encoder.layers.")).Max() + 1,
            MaxPositionEmbeddings: (int)Shape(file, TextName(file, "text_model.embeddings.position_embedding.weight"), source)[0]);
        config.Validate(source);
        return config;
    }

    /// <summary>
    /// The single-file name of a transformers CLIP parameter: <see cref="TextPrefix"/> + its name, or without the
    /// <c>text_model.</c> level in files written before transformers added it.
    /// </summary>
    public static string TextName(IReadOnlyDictionary<string, Tensor> file, string name) =>
        file.ContainsKey(TextPrefix + "text_model.embeddings.token_embedding.weight") || !name.StartsWith("text_model.", StringComparison.Ordinal)
            ? TextPrefix + name
            : TextPrefix + name["text_model.".Length..];

    /// <summary>
    /// Copies the file's tensors into <paramref name="model"/>: each parameter from the single-file name
    /// <paramref name="nameOf"/> gives it, 1x1-convolution weights into linear ones (the VAE's attention), any float type
    /// to the model's. Missing, mis-shaped, or left-over tensors under <paramref name="prefix"/> (except
    /// <paramref name="ignore"/>) are one <see cref="DmdInputException"/> naming them.
    /// </summary>
    internal static void LoadInto(nn.Module model, IReadOnlyDictionary<string, Tensor> file, Func<string, string> nameOf, string prefix,
                                  string what, string source, params string[] ignore)
    {
        var expected = model.state_dict();
        var used = new HashSet<string>();
        var missing = new List<string>();
        var misshaped = new List<string>();
        using (no_grad())
            foreach (var (name, dst) in expected)
            {
                var key = nameOf(name);
                if (!file.TryGetValue(key, out var src)) { missing.Add($"{key} (for {name})"); continue; }
                used.Add(key);
                var s = src;
                if (!s.shape.SequenceEqual(dst.shape) && s.dim() == dst.dim() + 2 && s.shape[^1] == 1 && s.shape[^2] == 1 && s.shape[..^2].SequenceEqual(dst.shape))
                    s = s.reshape(dst.shape);
                if (!s.shape.SequenceEqual(dst.shape)) { misshaped.Add($"{key}: file [{string.Join(",", src.shape)}] vs model [{string.Join(",", dst.shape)}]"); continue; }
                dst.copy_(s);
            }
        var unexpected = file.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal) && !used.Contains(k) && !ignore.Contains(k)).ToList();
        var report = new LoadReport(missing, unexpected, misshaped);
        if (!report.IsExact)
            throw new DmdInputException($"{source}: the {what} does not match its architecture: {report}. Is this a Stable Diffusion v1.x checkpoint, and (with a config folder) the folder of the same model?");
    }

    /// <summary>A config read off the shapes that does not validate: the model is not SD v1.x-shaped; say how to describe it.</summary>
    private static void Inferred(Action validate)
    {
        try { validate(); }
        catch (DmdInputException e)
        {
            throw new DmdInputException($"{e.Message} (the architecture was read off the weights as SD v1.x's; for another configuration pass a diffusers folder of it as the config folder, --config)", e);
        }
    }

    private static readonly (string From, string To)[] UnetFixed =
    {
        ("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."), ("mid_block.attentions.0.", "middle_block.1."),
    };

    private static readonly Dictionary<string, string> ResnetNames = new()
    {
        ["norm1"] = "in_layers.0", ["conv1"] = "in_layers.2", ["time_emb_proj"] = "emb_layers.1",
        ["norm2"] = "out_layers.0", ["conv2"] = "out_layers.3", ["conv_shortcut"] = "skip_connection",
    };

    private static readonly Dictionary<string, string> VaeAttention = new()
    {
        ["group_norm"] = "norm", ["to_q"] = "q", ["to_k"] = "k", ["to_v"] = "v", ["to_out.0"] = "proj_out",
    };

    private static string Resnet(string part, string name) =>
        ResnetNames.TryGetValue(part, out var v) ? v : throw new InvalidOperationException($"no single-file name for the resnet parameter {name}");

    private static string Shortcut(string rest) => rest.StartsWith("conv_shortcut.", StringComparison.Ordinal) ? "nin_shortcut." + rest["conv_shortcut.".Length..] : rest;

    private static int Int(Match m, int group) => int.Parse(m.Groups[group].Value, System.Globalization.CultureInfo.InvariantCulture);

    private static long[] Shape(IReadOnlyDictionary<string, Tensor> file, string key, string source) =>
        file.TryGetValue(key, out var t) ? t.shape
        : throw new DmdInputException($"{source} has no {key}: not a Stable Diffusion v1.x single-file checkpoint (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*)");

    /// <summary>The integers that follow <paramref name="prefix"/> in the file's names (block indices); {-1} when none.</summary>
    private static IEnumerable<int> Indices(IReadOnlyDictionary<string, Tensor> file, string prefix)
    {
        var found = file.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
            .Select(k => k[prefix.Length..].Split('.')[0])
            .Select(s => int.TryParse(s, out var i) ? i : -1).Where(i => i >= 0).ToList();
        return found.Count > 0 ? found : new[] { -1 };
    }
}
