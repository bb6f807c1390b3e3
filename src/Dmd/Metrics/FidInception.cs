using Dmd.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Dmd.Metrics;

// The FID Inception network of pytorch-fid (the TensorFlow inception-2015-12-05 graph ported to PyTorch):
// torchvision's Inception3 with 1008 classes, no aux head, and blocks patched to match TensorFlow.
// Field names are the keys of pytorch-fid's pt_inception-2015-12-05-6726825d.pth state dict.

/// <summary>Conv (no bias) + BatchNorm (eps 0.001) + ReLU: torchvision's BasicConv2d.</summary>
internal sealed class BasicConv2d : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv;
    private readonly BatchNorm2d bn;

    public BasicConv2d(long inChannels, long outChannels, (long, long) kernel, (long, long)? stride = null, (long, long)? padding = null)
        : base(nameof(BasicConv2d))
    {
        conv = nn.Conv2d(inChannels, outChannels, kernel, stride: stride ?? (1, 1), padding: padding ?? (0, 0), bias: false);
        bn = nn.BatchNorm2d(outChannels, eps: 0.001);
        RegisterComponents();
    }

    public BasicConv2d(long inChannels, long outChannels, long kernel, long stride = 1, long padding = 0)
        : this(inChannels, outChannels, (kernel, kernel), (stride, stride), (padding, padding)) { }

    public override Tensor forward(Tensor x) => F.relu(bn.forward(conv.forward(x)));
}

/// <summary>3x3 average pool, stride 1, padding 1, that ignores the padded zeros (TensorFlow's behaviour).</summary>
file static class Pool
{
    public static Tensor AvgExcludingPad(Tensor x) =>
        F.avg_pool2d(x, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 }, count_include_pad: false);

    public static Tensor Max(Tensor x) =>
        F.max_pool2d(x, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 });
}

/// <summary>pytorch-fid's FIDInceptionA (Mixed_5b..5d): InceptionA with count_include_pad=False in the pool branch.</summary>
internal sealed class FIDInceptionA : nn.Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch1x1, branch5x5_1, branch5x5_2, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3, branch_pool;

    public FIDInceptionA(long inChannels, long poolFeatures) : base(nameof(FIDInceptionA))
    {
        branch1x1 = new BasicConv2d(inChannels, 64, 1);
        branch5x5_1 = new BasicConv2d(inChannels, 48, 1);
        branch5x5_2 = new BasicConv2d(48, 64, 5, padding: 2);
        branch3x3dbl_1 = new BasicConv2d(inChannels, 64, 1);
        branch3x3dbl_2 = new BasicConv2d(64, 96, 3, padding: 1);
        branch3x3dbl_3 = new BasicConv2d(96, 96, 3, padding: 1);
        branch_pool = new BasicConv2d(inChannels, poolFeatures, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => cat(new[]
    {
        branch1x1.forward(x),
        branch5x5_2.forward(branch5x5_1.forward(x)),
        branch3x3dbl_3.forward(branch3x3dbl_2.forward(branch3x3dbl_1.forward(x))),
        branch_pool.forward(Pool.AvgExcludingPad(x)),
    }, 1);
}

/// <summary>torchvision's InceptionB (Mixed_6a): grid reduction 35 -> 17.</summary>
internal sealed class InceptionB : nn.Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch3x3, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3;

    public InceptionB(long inChannels) : base(nameof(InceptionB))
    {
        branch3x3 = new BasicConv2d(inChannels, 384, 3, stride: 2);
        branch3x3dbl_1 = new BasicConv2d(inChannels, 64, 1);
        branch3x3dbl_2 = new BasicConv2d(64, 96, 3, padding: 1);
        branch3x3dbl_3 = new BasicConv2d(96, 96, 3, stride: 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => cat(new[]
    {
        branch3x3.forward(x),
        branch3x3dbl_3.forward(branch3x3dbl_2.forward(branch3x3dbl_1.forward(x))),
        F.max_pool2d(x, new long[] { 3, 3 }, new long[] { 2, 2 }),
    }, 1);
}

/// <summary>pytorch-fid's FIDInceptionC (Mixed_6b..6e): InceptionC with count_include_pad=False in the pool branch.</summary>
internal sealed class FIDInceptionC : nn.Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch1x1;
    private readonly BasicConv2d branch7x7_1, branch7x7_2, branch7x7_3;
    private readonly BasicConv2d branch7x7dbl_1, branch7x7dbl_2, branch7x7dbl_3, branch7x7dbl_4, branch7x7dbl_5;
    private readonly BasicConv2d branch_pool;

    public FIDInceptionC(long inChannels, long channels7x7) : base(nameof(FIDInceptionC))
    {
        long c7 = channels7x7;
        branch1x1 = new BasicConv2d(inChannels, 192, 1);
        branch7x7_1 = new BasicConv2d(inChannels, c7, 1);
        branch7x7_2 = new BasicConv2d(c7, c7, (1, 7), padding: (0, 3));
        branch7x7_3 = new BasicConv2d(c7, 192, (7, 1), padding: (3, 0));
        branch7x7dbl_1 = new BasicConv2d(inChannels, c7, 1);
        branch7x7dbl_2 = new BasicConv2d(c7, c7, (7, 1), padding: (3, 0));
        branch7x7dbl_3 = new BasicConv2d(c7, c7, (1, 7), padding: (0, 3));
        branch7x7dbl_4 = new BasicConv2d(c7, c7, (7, 1), padding: (3, 0));
        branch7x7dbl_5 = new BasicConv2d(c7, 192, (1, 7), padding: (0, 3));
        branch_pool = new BasicConv2d(inChannels, 192, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var b7 = branch7x7_3.forward(branch7x7_2.forward(branch7x7_1.forward(x)));
        var b7dbl = branch7x7dbl_1.forward(x);
        b7dbl = branch7x7dbl_3.forward(branch7x7dbl_2.forward(b7dbl));
        b7dbl = branch7x7dbl_5.forward(branch7x7dbl_4.forward(b7dbl));
        return cat(new[] { branch1x1.forward(x), b7, b7dbl, branch_pool.forward(Pool.AvgExcludingPad(x)) }, 1);
    }
}

/// <summary>torchvision's InceptionD (Mixed_7a): grid reduction 17 -> 8.</summary>
internal sealed class InceptionD : nn.Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch3x3_1, branch3x3_2, branch7x7x3_1, branch7x7x3_2, branch7x7x3_3, branch7x7x3_4;

    public InceptionD(long inChannels) : base(nameof(InceptionD))
    {
        branch3x3_1 = new BasicConv2d(inChannels, 192, 1);
        branch3x3_2 = new BasicConv2d(192, 320, 3, stride: 2);
        branch7x7x3_1 = new BasicConv2d(inChannels, 192, 1);
        branch7x7x3_2 = new BasicConv2d(192, 192, (1, 7), padding: (0, 3));
        branch7x7x3_3 = new BasicConv2d(192, 192, (7, 1), padding: (3, 0));
        branch7x7x3_4 = new BasicConv2d(192, 192, 3, stride: 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => cat(new[]
    {
        branch3x3_2.forward(branch3x3_1.forward(x)),
        branch7x7x3_4.forward(branch7x7x3_3.forward(branch7x7x3_2.forward(branch7x7x3_1.forward(x)))),
        F.max_pool2d(x, new long[] { 3, 3 }, new long[] { 2, 2 }),
    }, 1);
}

/// <summary>
/// pytorch-fid's FIDInceptionE_1 (Mixed_7b: average pool without the padded zeros) and FIDInceptionE_2
/// (Mixed_7c: max pool, a quirk of the TensorFlow graph), selected by <c>maxPool</c>; same parameters.
/// </summary>
internal sealed class FIDInceptionE : nn.Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch1x1;
    private readonly BasicConv2d branch3x3_1, branch3x3_2a, branch3x3_2b;
    private readonly BasicConv2d branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3a, branch3x3dbl_3b;
    private readonly BasicConv2d branch_pool;
    private readonly bool maxPool;

    public FIDInceptionE(long inChannels, bool maxPool) : base(maxPool ? "FIDInceptionE_2" : "FIDInceptionE_1")
    {
        this.maxPool = maxPool;
        branch1x1 = new BasicConv2d(inChannels, 320, 1);
        branch3x3_1 = new BasicConv2d(inChannels, 384, 1);
        branch3x3_2a = new BasicConv2d(384, 384, (1, 3), padding: (0, 1));
        branch3x3_2b = new BasicConv2d(384, 384, (3, 1), padding: (1, 0));
        branch3x3dbl_1 = new BasicConv2d(inChannels, 448, 1);
        branch3x3dbl_2 = new BasicConv2d(448, 384, 3, padding: 1);
        branch3x3dbl_3a = new BasicConv2d(384, 384, (1, 3), padding: (0, 1));
        branch3x3dbl_3b = new BasicConv2d(384, 384, (3, 1), padding: (1, 0));
        branch_pool = new BasicConv2d(inChannels, 192, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var b3 = branch3x3_1.forward(x);
        b3 = cat(new[] { branch3x3_2a.forward(b3), branch3x3_2b.forward(b3) }, 1);
        var b3dbl = branch3x3dbl_2.forward(branch3x3dbl_1.forward(x));
        b3dbl = cat(new[] { branch3x3dbl_3a.forward(b3dbl), branch3x3dbl_3b.forward(b3dbl) }, 1);
        var pool = maxPool ? Pool.Max(x) : Pool.AvgExcludingPad(x);
        return cat(new[] { branch1x1.forward(x), b3, b3dbl, branch_pool.forward(pool) }, 1);
    }
}

/// <summary>
/// The FID Inception network (pytorch-fid variant of Inception v3): maps images (B, 3, H, W) with values in
/// [-1, 1] to the 2048-d pool features used by FID. Images are resized bilinearly to 299 x 299
/// (align_corners=False); single-channel images are repeated to three channels by <see cref="Features"/>.
/// Its parameters carry the names of pytorch-fid's <c>pt_inception-2015-12-05-6726825d.pth</c>; the weights
/// come from a safetensors file made once with <c>tools/convert_inception_weights.py</c>
/// (see <see cref="Load"/>).
/// </summary>
public sealed class FidInceptionV3 : nn.Module<Tensor, Tensor>
{
    /// <summary>Dimension of the pool features.</summary>
    public const int FeatureDim = 2048;

    private readonly BasicConv2d Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3;
    private readonly FIDInceptionA Mixed_5b, Mixed_5c, Mixed_5d;
    private readonly InceptionB Mixed_6a;
    private readonly FIDInceptionC Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e;
    private readonly InceptionD Mixed_7a;
    private readonly FIDInceptionE Mixed_7b, Mixed_7c;
    private readonly Linear fc;  // 1008-class head: part of the weights file, not of the features

    /// <summary>Builds the network with untrained weights; use <see cref="Load"/> for the real ones.</summary>
    public FidInceptionV3() : base(nameof(FidInceptionV3))
    {
        Conv2d_1a_3x3 = new BasicConv2d(3, 32, 3, stride: 2);
        Conv2d_2a_3x3 = new BasicConv2d(32, 32, 3);
        Conv2d_2b_3x3 = new BasicConv2d(32, 64, 3, padding: 1);
        Conv2d_3b_1x1 = new BasicConv2d(64, 80, 1);
        Conv2d_4a_3x3 = new BasicConv2d(80, 192, 3);
        Mixed_5b = new FIDInceptionA(192, poolFeatures: 32);
        Mixed_5c = new FIDInceptionA(256, poolFeatures: 64);
        Mixed_5d = new FIDInceptionA(288, poolFeatures: 64);
        Mixed_6a = new InceptionB(288);
        Mixed_6b = new FIDInceptionC(768, channels7x7: 128);
        Mixed_6c = new FIDInceptionC(768, channels7x7: 160);
        Mixed_6d = new FIDInceptionC(768, channels7x7: 160);
        Mixed_6e = new FIDInceptionC(768, channels7x7: 192);
        Mixed_7a = new InceptionD(768);
        Mixed_7b = new FIDInceptionE(1280, maxPool: false);
        Mixed_7c = new FIDInceptionE(2048, maxPool: true);
        fc = nn.Linear(FeatureDim, 1008);
        RegisterComponents();
    }

    /// <summary>Pool features (B, 2048) of images (B, 3, H, W) in [-1, 1].</summary>
    public override Tensor forward(Tensor x)
    {
        x = F.interpolate(x, new long[] { 299, 299 }, mode: InterpolationMode.Bilinear, align_corners: false);
        x = Conv2d_2b_3x3.forward(Conv2d_2a_3x3.forward(Conv2d_1a_3x3.forward(x)));  // 64 x 147 x 147
        x = F.max_pool2d(x, new long[] { 3, 3 }, new long[] { 2, 2 });                // 64 x 73 x 73
        x = Conv2d_4a_3x3.forward(Conv2d_3b_1x1.forward(x));                          // 192 x 71 x 71
        x = F.max_pool2d(x, new long[] { 3, 3 }, new long[] { 2, 2 });                // 192 x 35 x 35
        x = Mixed_5d.forward(Mixed_5c.forward(Mixed_5b.forward(x)));                  // 288 x 35 x 35
        x = Mixed_6a.forward(x);                                                      // 768 x 17 x 17
        x = Mixed_6e.forward(Mixed_6d.forward(Mixed_6c.forward(Mixed_6b.forward(x)))); // 768 x 17 x 17
        x = Mixed_7c.forward(Mixed_7b.forward(Mixed_7a.forward(x)));                  // 2048 x 8 x 8
        return F.adaptive_avg_pool2d(x, new long[] { 1, 1 }).flatten(1);              // 2048
    }

    /// <summary>
    /// Pool features (N, 2048), float32 on the CPU, of images (N, C, H, W) in [-1, 1] with C = 1 or 3,
    /// computed in evaluation mode without gradients, <paramref name="batchSize"/> images at a time on the
    /// network's device.
    /// </summary>
    public Tensor Features(Tensor images, int batchSize = 50)
    {
        if (images.dim() != 4 || (images.shape[1] != 1 && images.shape[1] != 3))
            throw new ArgumentException($"images must be (N, 1 or 3, H, W), got [{string.Join(",", images.shape)}]");
        eval();
        var device = parameters().First().device;
        var parts = new List<Tensor>();
        using (no_grad())
            for (long i = 0; i < images.shape[0]; i += batchSize)
            {
                using var scope = NewDisposeScope();
                var x = images.narrow(0, i, Math.Min(batchSize, images.shape[0] - i)).to(ScalarType.Float32).to(device);
                if (x.shape[1] == 1) x = x.expand(-1, 3, -1, -1);
                parts.Add(forward(x).cpu().MoveToOuterDisposeScope());
            }
        var result = cat(parts.ToArray(), 0);
        foreach (var p in parts) p.Dispose();
        return result;
    }

    /// <summary>
    /// Loads the FID Inception weights from a safetensors file converted from pytorch-fid's
    /// <c>pt_inception-2015-12-05-6726825d.pth</c>, in evaluation mode. A missing or mismatched file raises
    /// a <see cref="DmdInputException"/> that says how to make it.
    /// </summary>
    public static FidInceptionV3 Load(string weightsPath)
    {
        string fix = "Download pytorch-fid's FID weights pt_inception-2015-12-05-6726825d.pth (the FID_WEIGHTS_URL of " +
                     "pytorch_fid/inception.py) and convert them once with PyTorch: " +
                     $"`python tools/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth {weightsPath}`";
        if (!File.Exists(weightsPath))
            throw new DmdInputException($"FID Inception weights not found: {weightsPath}. {fix}");
        var net = new FidInceptionV3();
        try
        {
            // BatchNorm's num_batches_tracked counters play no part in evaluation and may be absent
            var report = Checkpoint.LoadModule(net, weightsPath, strict: false);
            if (report.Unexpected.Count > 0 || report.Missing.Any(k => !k.EndsWith(".num_batches_tracked", StringComparison.Ordinal)))
                throw new DmdInputException($"{weightsPath} is not the FID Inception network: {report}. {fix}");
        }
        catch (DmdInputException e) when (!e.Message.Contains(fix))
        {
            net.Dispose();
            throw new DmdInputException($"{e.Message}. {fix}", e);
        }
        catch
        {
            net.Dispose();
            throw;
        }
        net.eval();
        return net;
    }
}
