using System.Buffers.Binary;
using System.Text.Json;
using Dmd.Diffusion;
using Dmd.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Dmd.Metrics;

// LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") as the
// `lpips` Python package computes it: lpips/lpips.py LPIPS.forward with lpips=True, spatial=False, normalize=False,
// on the slices of lpips/pretrained_networks.py. Parameter names are torchvision's (`features.{i}.*`) plus the
// package's linear layers (`lin{k}.model.1.weight`), so one safetensors file made by tools/convert_lpips_weights.py
// holds everything.

/// <summary>lpips' NetLinLayer: dropout then a 1x1 convolution to one channel, no bias (weights <c>model.1.weight</c>).</summary>
internal sealed class NetLinLayer : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<nn.Module<Tensor, Tensor>> model;

    public NetLinLayer(long channels) : base(nameof(NetLinLayer))
    {
        model = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias: false));
        RegisterComponents();
    }

    /// <summary>The 1x1 convolution alone: LPIPS is a frozen metric, its dropout (model.0) never applies.</summary>
    public override Tensor forward(Tensor x) => model[1].forward(x);
}

/// <summary>
/// The LPIPS perceptual distance (v0.1) with a VGG16 or AlexNet trunk, frozen: <c>forward(x, y)</c> maps two image
/// batches (B, C, H, W) in [-1, 1], C = 1 or 3, to their distances (B). Gradients flow to the inputs (DMD's
/// regression loss backpropagates through it into the generator); every parameter has requires_grad false and the
/// module stays in evaluation mode. Images are first resized bilinearly to <see cref="ResizeTo"/> (DESIGN.md: "inputs
/// upsampled to 224"). The weights come from a safetensors file made once with <c>tools/convert_lpips_weights.py</c>
/// (see <see cref="Load"/>).
/// <code>
///   d(x, y) = sum_k mean_hw  w_k . (f_k(x) / |f_k(x)| - f_k(y) / |f_k(y)|)^2     f_k: k-th tap, |.|: norm over channels
/// </code>
/// </summary>
public sealed class Lpips : nn.Module<Tensor, Tensor, Tensor>
{
    // lpips' ScalingLayer (torch.Tensor buffers, so float32 values): constants, not part of the state dict
    private static readonly float[] Shift = { -.030f, -.088f, -.188f };
    private static readonly float[] Scale = { .458f, .448f, .450f };

    /// <summary>Architecture of one trunk: torchvision's <c>features</c> up to the last tap.</summary>
    private sealed record Trunk(string Name, Func<List<nn.Module<Tensor, Tensor>>> Layers, int[] ConvIndices, int[] Taps, long[] Channels);

    private static readonly Trunk Vgg = new("vgg", VggLayers,
        ConvIndices: new[] { 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 },
        Taps: new[] { 3, 8, 15, 22, 29 },                   // relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        Channels: new long[] { 64, 128, 256, 512, 512 });

    private static readonly Trunk Alex = new("alex", AlexLayers,
        ConvIndices: new[] { 0, 3, 6, 8, 10 },
        Taps: new[] { 1, 4, 7, 9, 11 },                     // relu1 .. relu5
        Channels: new long[] { 64, 192, 384, 256, 256 });

    private readonly ModuleList<nn.Module<Tensor, Tensor>> features;
    private readonly NetLinLayer lin0, lin1, lin2, lin3, lin4;
    private readonly NetLinLayer[] lins;   // the same five modules in order (arrays are not registered)
    private readonly int[] taps;

    /// <summary>"vgg" or "alex".</summary>
    public string Backbone { get; }

    /// <summary>Side of the square both inputs are resized to (bilinear, align_corners=False); 0 keeps their size.</summary>
    public int ResizeTo { get; set; } = 224;

    private Lpips(Trunk trunk) : base(nameof(Lpips))
    {
        Backbone = trunk.Name;
        taps = trunk.Taps;
        features = nn.ModuleList(trunk.Layers().ToArray());
        var c = trunk.Channels;
        lin0 = new NetLinLayer(c[0]); lin1 = new NetLinLayer(c[1]); lin2 = new NetLinLayer(c[2]);
        lin3 = new NetLinLayer(c[3]); lin4 = new NetLinLayer(c[4]);
        lins = new[] { lin0, lin1, lin2, lin3, lin4 };
        RegisterComponents();
        foreach (var p in parameters()) p.requires_grad = false;
        eval();
    }

    /// <summary>
    /// Builds LPIPS with untrained weights (use <see cref="Load"/> for the real ones), frozen and in evaluation mode.
    /// <paramref name="backbone"/>: "vgg" (torchvision vgg16 features) or "alex" (torchvision alexnet features).
    /// </summary>
    public static Lpips Build(string backbone) => new(backbone.ToLowerInvariant() switch
    {
        "vgg" or "vgg16" => Vgg,
        "alex" or "alexnet" => Alex,
        _ => throw new ArgumentException($"LPIPS backbone must be \"vgg\" or \"alex\", got \"{backbone}\"", nameof(backbone)),
    });

    /// <summary>torchvision vgg16 features[0..29]: 3x3 convolutions (padding 1) with ReLU, 2x2 max pools.</summary>
    private static List<nn.Module<Tensor, Tensor>> VggLayers()
    {
        var layers = new List<nn.Module<Tensor, Tensor>>();
        long cin = 3;
        foreach (long c in new long[] { 64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512 })
        {
            if (c == 0) { layers.Add(nn.MaxPool2d(2, 2)); continue; }
            layers.Add(nn.Conv2d(cin, c, 3, padding: 1));
            layers.Add(nn.ReLU());
            cin = c;
        }
        return layers;  // torchvision's final pool (features.30) follows relu5_3 and is never used
    }

    /// <summary>torchvision alexnet features[0..11].</summary>
    private static List<nn.Module<Tensor, Tensor>> AlexLayers() => new()
    {
        nn.Conv2d(3, 64, 11, stride: 4, padding: 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding: 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding: 1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding: 1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding: 1), nn.ReLU(),
    };

    /// <summary>LPIPS distances (B) between images <paramref name="x"/> and <paramref name="y"/> (B, 1 or 3, H, W) in [-1, 1].</summary>
    public override Tensor forward(Tensor x, Tensor y)
    {
        if (x.dim() != 4 || (x.shape[1] != 1 && x.shape[1] != 3) || !x.shape.SequenceEqual(y.shape))
            throw new ArgumentException($"LPIPS needs two image batches of one shape (B, 1 or 3, H, W), got [{string.Join(",", x.shape)}] and [{string.Join(",", y.shape)}]");
        using var scope = NewDisposeScope();
        var fx = Taps(ScaleInput(x));
        var fy = Taps(ScaleInput(y));
        Tensor? d = null;
        for (int k = 0; k < taps.Length; k++)
        {
            var diff = (UnitNormalize(fx[k]) - UnitNormalize(fy[k])).square();
            var dk = lins[k].forward(diff).mean(new long[] { 2, 3 });   // (B, 1): spatial average
            d = d is null ? dk : d + dk;
        }
        return d!.reshape(x.shape[0]).MoveToOuterDisposeScope();
    }

    /// <summary>Greyscale to RGB, resize, then lpips' ScalingLayer (x - shift) / scale.</summary>
    private Tensor ScaleInput(Tensor x)
    {
        if (x.shape[1] == 1) x = x.expand(-1, 3, -1, -1);
        if (ResizeTo > 0 && (x.shape[2] != ResizeTo || x.shape[3] != ResizeTo))
            x = F.interpolate(x, new long[] { ResizeTo, ResizeTo }, mode: InterpolationMode.Bilinear, align_corners: false);
        var shift = tensor(Shift, new long[] { 1, 3, 1, 1 }).to(x.dtype, x.device);
        var scale = tensor(Scale, new long[] { 1, 3, 1, 1 }).to(x.dtype, x.device);
        return (x - shift) / scale;
    }

    /// <summary>The trunk's activations at the five taps.</summary>
    private List<Tensor> Taps(Tensor h)
    {
        var outs = new List<Tensor>(taps.Length);
        for (int i = 0; i <= taps[^1]; i++)
        {
            h = features[i].forward(h);
            if (taps.Contains(i)) outs.Add(h);
        }
        return outs;
    }

    /// <summary>lpips.normalize_tensor: x / (sqrt(sum_c x^2) + 1e-10).</summary>
    private static Tensor UnitNormalize(Tensor f) =>
        f / (f.square().sum(1, keepdim: true).sqrt() + DenoiserExtensions.Const(1e-10, f));

    /// <summary>
    /// Loads LPIPS from a safetensors file made by <c>tools/convert_lpips_weights.py</c> (torchvision's ImageNet
    /// trunk plus the lpips package's v0.1 linear layers); the trunk (vgg or alex) is recognised from the tensor
    /// names. A missing file, or one whose tensors are missing, unexpected or mis-shaped, raises a
    /// <see cref="DmdInputException"/> that says how to make it.
    /// </summary>
    public static Lpips Load(string path)
    {
        string Fix(string net) => "Make it once with PyTorch and torchvision from the lpips package's linear weights: " +
            $"`python tools/convert_lpips_weights.py --net {net} --lin lpips/weights/v0.1/{net}.pth --out {path}`";
        if (!File.Exists(path))
            throw new DmdInputException($"LPIPS weights not found: {path}. {Fix("vgg")} (or --net alex)");
        HashSet<string> names;
        try { names = SafetensorsNames(path); }
        catch (Exception e) when (e is IOException or JsonException or InvalidDataException)
        {
            throw new DmdInputException($"{path} is not a readable safetensors file ({e.Message}). {Fix("vgg")} (or --net alex)", e);
        }
        // the trunk whose names the file shares most (a damaged vgg file is still recognised as vgg)
        var trunk = new[] { Vgg, Alex }.OrderByDescending(t => ExpectedNames(t).Count(names.Contains)).First();
        if (!ExpectedNames(trunk).Any(names.Contains))
            throw new DmdInputException($"{path} holds no LPIPS tensors (features.{{i}}.weight, lin{{k}}.model.1.weight). {Fix("vgg")} (or --net alex)");
        var net = new Lpips(trunk);
        try { Checkpoint.LoadModule(net, path); }
        catch (DmdInputException e)
        {
            net.Dispose();
            throw new DmdInputException($"LPIPS-{trunk.Name}: {e.Message} {Fix(trunk.Name)}", e);
        }
        return net;
    }

    private static IEnumerable<string> ExpectedNames(Trunk t) =>
        t.ConvIndices.SelectMany(i => new[] { $"features.{i}.weight", $"features.{i}.bias" })
            .Concat(Enumerable.Range(0, 5).Select(k => $"lin{k}.model.1.weight"));

    /// <summary>Tensor names in a safetensors header (8-byte little-endian length, then a JSON object).</summary>
    private static HashSet<string> SafetensorsNames(string path)
    {
        using var f = File.OpenRead(path);
        var len = new byte[8];
        f.ReadExactly(len);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (n > (ulong)Math.Min(f.Length - 8, 100_000_000)) throw new InvalidDataException($"header length {n} exceeds the file");
        var header = new byte[n];
        f.ReadExactly(header);
        using var doc = JsonDocument.Parse(header);
        return doc.RootElement.EnumerateObject().Select(p => p.Name).Where(k => k != "__metadata__").ToHashSet();
    }
}
