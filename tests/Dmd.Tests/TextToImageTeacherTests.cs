using Dmd.Data;
using Dmd.Networks;
using Dmd.Pipelines;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>The captions, their tokenizer and the two-stage latent text-to-image teacher (`dmd train-text2img-teacher`).</summary>
public class TextToImageTeacherTests
{
    /// <summary>Tiny networks: every test runs in seconds.</summary>
    internal static readonly TextToImageTeacherConfig Tiny = new()
    {
        VaeSteps = 4, VaeBatchSize = 8, VaeChannels = 8, ScaleImages = 32, Steps = 6, BatchSize = 8, UnetChannels = 8, UnetHeads = 2,
        NormGroups = 4, TextHidden = 16, TextHeads = 2, TextLayers = 1, LrRampupSteps = 2, EmaHalfLifeSteps = 2, CheckpointEvery = 1000,
        LogEvery = 1, GridEvery = 0, GridPerClass = 1, GridSteps = 2,
    };

    /// <summary>40 synthetic 32x32 greyscale images of the ten classes: class c is a bright square whose size grows with c, at a random place.</summary>
    internal static ImageDataset Squares(int n = 40, int seed = 1)
    {
        var rng = new Random(seed);
        var px = new byte[n * 32 * 32];
        var labels = new long[n];
        for (int i = 0; i < n; i++)
        {
            int c = i % 10, side = 4 + 2 * c, x0 = rng.Next(0, 33 - side), y0 = rng.Next(0, 33 - side);
            labels[i] = c;
            for (int y = y0; y < y0 + side; y++)
                for (int x = x0; x < x0 + side; x++) px[i * 1024 + y * 32 + x] = 220;
        }
        return new ImageDataset(tensor(px, new long[] { n, 1, 32, 32 }), tensor(labels), 10, FashionMnistCaptions.ClassNames);
    }

    [Fact]
    public void EveryCaptionWordIsOneTokenOfTheGeneratedTokenizer()
    {
        var dir = TestUtil.TempDir();
        int vocab = FashionMnistCaptions.WriteTokenizer(dir);
        var tok = ClipTokenizer.FromFolder(dir);
        Assert.Equal(vocab, tok.VocabSize);
        Assert.Equal((vocab - 2, vocab - 1), (tok.BosId, tok.EosId));
        foreach (var caption in FashionMnistCaptions.AllCaptions())
        {
            var words = ClipTokenizer.PreTokenize(ClipTokenizer.Clean(caption));
            Assert.Equal(words.Select(w => w + "</w>"), tok.Tokenize(caption));  // one token per word
            var ids = tok.EncodeIds(caption);
            Assert.Equal(tok.BosId, ids[0]);
            Assert.DoesNotContain(tok.UnkId, ids[1..(words.Count + 1)]);           // every word is in the vocabulary
            Assert.Equal(tok.EosId, ids[words.Count + 1]);
        }
        // the class names tokenise to different tokens, and t-shirt is t, -, shirt
        Assert.Equal(new[] { "t</w>", "-</w>", "shirt</w>" }, tok.Tokenize("t-shirt"));
        Assert.Equal(10, FashionMnistCaptions.ClassNames.Select(n => string.Join(" ", tok.Tokenize(n))).Distinct().Count());
        Assert.Equal(new[] { tok.BosId, tok.EosId }, tok.EncodeIds("")[..2]);      // the unconditional prompt
    }

    [Fact]
    public void ClassOfReadsTheClassOfEveryCaptionAndOfNoOtherText()
    {
        for (int c = 0; c < 10; c++)
        {
            Assert.Equal("a photo of a " + FashionMnistCaptions.ClassNames[c], FashionMnistCaptions.PromptFor(c));
            for (int t = 0; t < FashionMnistCaptions.Templates.Count; t++)
                Assert.Equal(c, FashionMnistCaptions.ClassOf(FashionMnistCaptions.Caption(c, t)));
        }
        Assert.Equal(0, FashionMnistCaptions.ClassOf("A photo of a T-shirt"));
        Assert.Equal(6, FashionMnistCaptions.ClassOf("a shirt"));
        Assert.Equal(9, FashionMnistCaptions.ClassOf("two ankle  boots"));
        Assert.Equal(7, FashionMnistCaptions.ClassOf("sneakers"));
        foreach (var none in new[] { "", "a photo of a cat", "a shirt and a bag", "bagel", "boot" })
            Assert.Equal(-1, FashionMnistCaptions.ClassOf(none));
        Assert.Throws<DmdInputException>(() => FashionMnistCaptions.PromptFor(10));

        var path = Path.Combine(TestUtil.TempDir(), "prompts.txt");
        FashionMnistCaptions.WritePrompts(path, 3);
        var lines = File.ReadAllLines(path);
        Assert.Equal(30, lines.Length);
        Assert.Equal(Enumerable.Range(0, 30).Select(i => i / 3), lines.Select(FashionMnistCaptions.ClassOf));
    }

    static Dictionary<string, Tensor> Snapshot(nn.Module m) => m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());

    static bool Changed(nn.Module m, Dictionary<string, Tensor> before) => m.state_dict().Any(kv => !kv.Value.eq(before[kv.Key]).all().item<bool>());

    [Fact]
    public void StageBTrainsTheTextEncoderAndTheUnetThroughCrossAttentionAndLeavesTheVaeAlone()
    {
        using var t = new TextToImageTeacherTrainer(Tiny with { CaptionDropout = 0 }, Squares());
        for (int i = 0; i < 2; i++) t.TrainVaeStep();
        var vae = Snapshot(t.Vae);
        var (text, unet) = (Snapshot(t.TextEncoder), Snapshot(t.Unet));
        var (emaText, emaUnet) = (Snapshot(t.EmaTextEncoder), Snapshot(t.EmaUnet));
        t.Vae.zero_grad();
        var (loss, skipped) = t.TrainUnetStep();
        Assert.False(skipped);
        Assert.True(double.IsFinite(loss));
        // the loss reaches the text encoder only through the UNet's cross-attention: every layer of it gets a gradient
        foreach (var (name, p) in t.TextEncoder.named_parameters())
            Assert.True(p.grad is not null && p.grad.abs().sum().item<float>() > 0, $"text encoder {name} has no gradient");
        foreach (var (name, p) in t.Unet.named_parameters())
            Assert.True(p.grad is not null, $"UNet {name} has no gradient");
        Assert.All(t.Vae.parameters(), p => Assert.True(p.grad is null || p.grad.abs().sum().item<float>() == 0));
        Assert.True(Changed(t.TextEncoder, text) && Changed(t.Unet, unet), "stage b must update the text encoder and the UNet");
        Assert.True(Changed(t.EmaTextEncoder, emaText) && Changed(t.EmaUnet, emaUnet), "stage b must move the EMA");
        Assert.False(Changed(t.Vae, vae), "stage b must not change the VAE");
    }

    [Fact]
    public void AFewStepsOfEachStageLowerItsLoss()
    {
        var cfg = Tiny with { VaeLearningRate = 3e-3, LearningRate = 3e-3 };
        using var t = new TextToImageTeacherTrainer(cfg, Squares());
        var vae = Enumerable.Range(0, 40).Select(_ => t.TrainVaeStep().L1).ToList();
        Assert.True(vae.TakeLast(5).Average() < 0.7 * vae.Take(5).Average(), $"VAE L1 {vae.Take(5).Average():F3} -> {vae.TakeLast(5).Average():F3}");
        var unet = Enumerable.Range(0, 40).Select(_ => t.TrainUnetStep().Loss).ToList();
        Assert.True(unet.TakeLast(10).Average() < 0.8 * unet.Take(5).Average(), $"eps MSE {unet.Take(5).Average():F3} -> {unet.TakeLast(10).Average():F3}");
    }

    [Fact]
    public void TheRunWritesADiffusersFolderThatStableDiffusionLoadsAndSamples()
    {
        var dir = TestUtil.TempDir();
        using var t = new TextToImageTeacherTrainer(Tiny, Squares());
        Assert.True(t.Run(dir, "squares"));
        foreach (var f in new[] { "model_index.json", "config.json", "losses.csv", "samples-000006.png", "vae-stage/losses.csv", "vae-stage/reconstructions.png",
                                  "tokenizer/vocab.json", "tokenizer/merges.txt", "text_encoder/model.safetensors", "text_encoder/config.json",
                                  "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json" })
            Assert.True(File.Exists(Path.Combine(dir, f)), f);

        using var sd = StableDiffusion.Load(dir);
        Assert.Equal(t.ScalingFactor, sd.Vae.ScalingFactor);
        Assert.NotEqual(1.0, sd.Vae.ScalingFactor);
        Assert.Equal((1000, "scaled_linear", 0.00085, 0.012, 1), (sd.Scheduler.NumTrainTimesteps, sd.Scheduler.BetaSchedule, sd.Scheduler.BetaStart, sd.Scheduler.BetaEnd, sd.Scheduler.StepsOffset));
        Assert.Equal(2, sd.VaeScaleFactor);
        Assert.Equal(32, sd.DefaultSize);
        // the folder holds the EMA weights, by name
        using (no_grad())
        {
            var ids = sd.Tokenizer.Encode(new[] { "a photo of a bag" });
            Assert.True(TestUtil.Same(t.EmaTextEncoder.forward(ids), sd.TextEncoder.forward(ids)));
            var z = randn(1, 4, 16, 16);
            var ctx = sd.TextEncoder.forward(ids);
            Assert.True(TestUtil.Same(t.EmaUnet.forward(z, tensor(500L), ctx), sd.Unet.forward(z, tensor(500L), ctx)));
        }
        var res = sd.Generate(new[] { "a photo of a bag", "a sneaker", "" }, new TextToImageOptions { Steps = 3, Guidance = 3 });
        Assert.Equal(new long[] { 3, 1, 32, 32 }, res.Images.shape);
        Assert.True(res.Images.isfinite().all().item<bool>());
    }

    [Fact]
    public void AStoppedRunContinuesBitForBitThroughBothStages()
    {
        var whole = TestUtil.TempDir();
        using (var t = new TextToImageTeacherTrainer(Tiny, Squares())) Assert.True(t.Run(whole, "squares"));

        var parts = TestUtil.TempDir();
        using (var t = new TextToImageTeacherTrainer(Tiny, Squares()))                 // stops inside stage a
            Assert.False(t.Run(parts, "squares", new RunOptions { StopAfter = 2 }));
        Assert.False(File.Exists(Path.Combine(parts, "vae", "config.json")));
        using (var t = new TextToImageTeacherTrainer(Tiny, Squares()))                 // finishes stage a, stops inside stage b
        {
            Assert.False(t.Run(parts, "squares", new RunOptions { StopAfter = 4 }));
            Assert.Equal((4, 4), (t.VaeStep, t.UnetStep));
        }
        using (var t = new TextToImageTeacherTrainer(Tiny, Squares()))                 // resumes stage b from its checkpoint
            Assert.True(t.Run(parts, "squares"));

        foreach (var file in new[] { "vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors" })
            Assert.True(File.ReadAllBytes(Path.Combine(whole, file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(parts, file))), file);
        Assert.Equal(File.ReadAllText(Path.Combine(whole, "vae", "config.json")), File.ReadAllText(Path.Combine(parts, "vae", "config.json")));
        Assert.Equal(File.ReadAllLines(Path.Combine(whole, "losses.csv")).Select(l => string.Join(",", l.Split(',')[..^1])),  // rss_mb differs
                     File.ReadAllLines(Path.Combine(parts, "losses.csv")).Select(l => string.Join(",", l.Split(',')[..^1])));
    }

    [Fact]
    public void SettingsThatCannotBuildTheModelsAreOneLineErrors()
    {
        var e = Assert.Throws<DmdInputException>(() => new TextToImageTeacherTrainer(Tiny with { UnetChannels = 10 }, Squares()));
        Assert.Contains("--unet-channels", e.Message);
        Assert.Throws<DmdInputException>(() => new TextToImageTeacherTrainer(Tiny, Squares().WithoutLabels()));
    }
}

/// <summary>The GroupNorm of the Stable Diffusion networks: TorchSharp's nn.GroupNorm module has a broken backward here.</summary>
public class FunctionalGroupNormTests
{
    [Fact]
    public void FunctionalGroupNormMatchesAHandWrittenGroupNormInValueAndGradient()
    {
        var norm = new FunctionalGroupNorm(4, 8, 1e-5);
        using (no_grad()) { norm.parameters().First().copy_(randn(8)); norm.parameters().Last().copy_(randn(8)); }
        var x = randn(2, 8, 6, 6).requires_grad_(true);
        var r = randn(2, 8, 6, 6);
        (norm.forward(x) * r).sum().backward();
        var (w, b) = (norm.parameters().First(), norm.parameters().Last());

        var x2 = x.detach().clone().requires_grad_(true);
        var w2 = w.detach().clone().requires_grad_(true);
        var b2 = b.detach().clone().requires_grad_(true);
        var g = x2.reshape(2, 4, -1);
        var normed = ((g - g.mean(new long[] { 2 }, keepdim: true)) / (g.var(2, unbiased: false, keepdim: true) + 1e-5).sqrt()).reshape(2, 8, 6, 6);
        var y2 = normed * w2.view(1, 8, 1, 1) + b2.view(1, 8, 1, 1);
        (y2 * r).sum().backward();

        Assert.True(norm.forward(x).allclose(y2, rtol: 1e-4, atol: 1e-5));
        Assert.True(x.grad!.allclose(x2.grad!, rtol: 1e-3, atol: 1e-4), "input gradient");
        Assert.True(w.grad!.allclose(w2.grad!, rtol: 1e-3, atol: 1e-4) && b.grad!.allclose(b2.grad!, rtol: 1e-3, atol: 1e-4), "weight and bias gradients");
        Assert.True(x.grad!.abs().sum().item<float>() > 0);
        Assert.Equal(new[] { "weight", "bias" }, norm.named_parameters().Select(p => p.name));  // diffusers' names
    }
}
