using System.Text.Json.Nodes;
using Dmd.Networks;
using Dmd.Pipelines;
using TorchSharp;
using TorchSharp.PyBridge;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Stable Diffusion v1.x's single-file checkpoint (the original LDM layout) against diffusers' own single-file loader:
/// TestData/sd_single_file (make_sd_single_file.py) holds the tiny pipeline of TestData/sd_pipeline in that layout, as
/// safetensors and as a .ckpt pickle, checked there to convert back into the diffusers folder with diffusers'
/// convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint, and SD v1.5's full-size names and shapes in that layout.
/// </summary>
public sealed class StableDiffusionSingleFileTests
{
    private readonly ITestOutputHelper output;

    public StableDiffusionSingleFileTests(ITestOutputHelper output) => this.output = output;

    private static string Data(params string[] parts) => Path.Combine(new[] { AppContext.BaseDirectory, "TestData" }.Concat(parts).ToArray());

    private static string Folder => Data("sd_pipeline", "model");

    /// <summary>Every parameter and buffer of <paramref name="a"/> equals <paramref name="b"/>'s, bit for bit.</summary>
    private static void AssertSameWeights(nn.Module a, nn.Module b, string what)
    {
        var sa = a.state_dict();
        var sb = b.state_dict();
        Assert.Equal(sb.Keys.OrderBy(k => k), sa.Keys.OrderBy(k => k));
        foreach (var (k, v) in sb)
            Assert.True(v.shape.SequenceEqual(sa[k].shape) && v.eq(sa[k]).all().item<bool>(), $"{what}: {k} differs");
    }

    [Theory]
    [InlineData("tiny-sd.safetensors")]
    [InlineData("tiny-sd.ckpt")]
    public void SingleFileLoadsTheDiffusersFoldersWeightsAndImages(string file)
    {
        using var scope = NewDisposeScope();
        using var folder = StableDiffusion.Load(Folder);
        using var single = StableDiffusion.LoadSingleFile(Data("sd_single_file", file), new SingleFileOptions { ConfigFolder = Folder });
        AssertSameWeights(single.Unet, folder.Unet, "UNet");
        AssertSameWeights(single.Vae, folder.Vae, "VAE");
        AssertSameWeights(single.TextEncoder, folder.TextEncoder, "text encoder");
        Assert.Equal(folder.Scheduler.TrainSigmas, single.Scheduler.TrainSigmas);

        // and therefore diffusers' pipeline output (sd_pipeline's io.final_latents), through the same code
        var io = Safetensors.LoadStateDict(Data("sd_pipeline", "pipeline_io.safetensors"));
        var c = (JsonObject)JsonNode.Parse(File.ReadAllText(Data("sd_pipeline", "pipeline_case.json")))!;
        var prompts = c["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
        var options = new TextToImageOptions
        {
            NegativePrompt = c["negative_prompt"]!.GetValue<string>(), Steps = c["steps"]!.GetValue<int>(), Guidance = c["guidance_scale"]!.GetValue<double>(),
        };
        var final = io["io.final_latents"];
        var res = single.Generate(prompts, options, io["io.latents"]);
        double d = (res.Latents - final).abs().max().item<float>(), scale = final.abs().max().item<float>();
        output.WriteLine($"{file}: final latents vs diffusers' pipeline {d:E2} (max |latent| {scale:F1})");
        Assert.True(d < 1e-4 * scale, $"final latents differ by {d:E2}");
    }

    [Fact]
    public void HalfPrecisionSingleFilesLoadIntoFloat32Networks()
    {
        // SD's single files are often float16 (v1-5-pruned-emaonly-fp16.safetensors): the weights arrive rounded, in float32
        using var scope = NewDisposeScope();
        var tensors = StableDiffusionCheckpoint.Read(Data("sd_single_file", "tiny-sd.safetensors"));
        var half = tensors.ToDictionary(kv => kv.Key, kv => kv.Value.is_floating_point() ? kv.Value.to(ScalarType.Float16) : kv.Value);
        var path = Path.Combine(TestUtil.TempDir(), "tiny-sd-fp16.safetensors");
        Safetensors.SaveStateDict(path, half);
        using var folder = StableDiffusion.Load(Folder);
        using var single = StableDiffusion.LoadSingleFile(path, new SingleFileOptions { ConfigFolder = Folder });
        foreach (var (a, b) in new (nn.Module, nn.Module)[] { (single.Unet, folder.Unet), (single.Vae, folder.Vae), (single.TextEncoder, folder.TextEncoder) })
        {
            var sb = b.state_dict();
            foreach (var (k, v) in a.state_dict())
            {
                Assert.Equal(ScalarType.Float32, v.dtype);
                Assert.True(v.eq(sb[k].to(ScalarType.Float16).to(ScalarType.Float32)).all().item<bool>(), $"{k}: not the float16-rounded weight");
            }
        }
    }

    [Fact]
    public void ConvertWritesADiffusersFolderOfTheSameModelAndRefusesAFullFolder()
    {
        using var scope = NewDisposeScope();
        var outDir = Path.Combine(TestUtil.TempDir(), "converted");
        var (code, text) = CliTests.Run("convert-sd", Data("sd_single_file", "tiny-sd.safetensors"), "--out", outDir, "--config", Folder);
        output.WriteLine(text);
        Assert.Equal(0, code);
        using (var converted = StableDiffusion.Load(outDir))
        using (var folder = StableDiffusion.Load(Folder))
        {
            AssertSameWeights(converted.Unet, folder.Unet, "UNet");
            AssertSameWeights(converted.Vae, folder.Vae, "VAE");
            AssertSameWeights(converted.TextEncoder, folder.TextEncoder, "text encoder");
            Assert.Equal(folder.Tokenizer.EncodeIds("a fox, in a field!"), converted.Tokenizer.EncodeIds("a fox, in a field!"));
        }
        Assert.False(Directory.Exists(outDir + ".converting"));
        (code, text) = CliTests.Run("convert-sd", Data("sd_single_file", "tiny-sd.safetensors"), "--out", outDir, "--config", Folder);
        Assert.Equal(2, code);
        Assert.Contains("not empty", text);
    }

    /// <summary>SD v1.5's single-file names and shapes (sd15_ldm_params.txt), as META tensors (no memory).</summary>
    private static Dictionary<string, Tensor> Sd15Shapes()
    {
        var d = new Dictionary<string, Tensor>();
        foreach (var line in File.ReadLines(Data("sd_single_file", "sd15_ldm_params.txt")))
        {
            var parts = line.Split(' ');
            d[parts[0]] = empty(parts[1].Split(',').Select(long.Parse).ToArray(), device: META);
        }
        return d;
    }

    [Fact]
    public void Sd15ArchitectureIsReadOffTheShapesAndEveryNameMapsBothWays()
    {
        using var scope = NewDisposeScope();
        var file = Sd15Shapes();
        var unetConfig = StableDiffusionCheckpoint.InferUnetConfig(file);
        var sd15 = new UNet2DConditionConfig();
        Assert.Equal(sd15.BlockOutChannels, unetConfig.BlockOutChannels);
        Assert.Equal(sd15.DownBlockTypes, unetConfig.DownBlockTypes);
        Assert.Equal(sd15.UpBlockTypes, unetConfig.UpBlockTypes);
        Assert.Equal(sd15.AttentionHeads, unetConfig.AttentionHeads);
        Assert.Equal((sd15.InChannels, sd15.OutChannels, sd15.LayersPerBlock, sd15.CrossAttentionDim),
                     (unetConfig.InChannels, unetConfig.OutChannels, unetConfig.LayersPerBlock, unetConfig.CrossAttentionDim));
        var vaeConfig = StableDiffusionCheckpoint.InferVaeConfig(file);
        var vae15 = new AutoencoderKLConfig();
        Assert.Equal(vae15.BlockOutChannels, vaeConfig.BlockOutChannels);
        Assert.Equal((vae15.LayersPerBlock, vae15.LatentChannels, vae15.InChannels, vae15.OutChannels, vae15.ScalingFactor),
                     (vaeConfig.LayersPerBlock, vaeConfig.LatentChannels, vaeConfig.InChannels, vaeConfig.OutChannels, vaeConfig.ScalingFactor));

        // every parameter of the SD v1.5 networks has a single-file name of the right shape, and no file name is left over
        void Covers(nn.Module model, Func<string, string> nameOf, string prefix)
        {
            var used = new HashSet<string>();
            foreach (var (name, t) in model.state_dict())
            {
                var key = prefix + nameOf(name);
                Assert.True(file.TryGetValue(key, out var f), $"{name} -> {key}: not in SD v1.5's file");
                Assert.Equal(t.numel(), f!.numel());
                Assert.True(t.shape.SequenceEqual(f.shape) || f.shape.Take((int)t.dim()).SequenceEqual(t.shape), $"{key}: [{string.Join(",", f.shape)}] vs [{string.Join(",", t.shape)}]");
                Assert.True(used.Add(key), $"{key} used twice");
            }
            Assert.Equal(file.Keys.Count(k => k.StartsWith(prefix, StringComparison.Ordinal)), used.Count);
        }
        Covers(new UNet2DConditionModel(unetConfig, META), n => StableDiffusionCheckpoint.UnetName(n, unetConfig), StableDiffusionCheckpoint.UnetPrefix);
        Covers(new AutoencoderKL(vaeConfig, META), n => StableDiffusionCheckpoint.VaeName(n, vaeConfig), StableDiffusionCheckpoint.VaePrefix);
        output.WriteLine($"SD v1.5: {file.Count} single-file tensors, all mapped");

        // CLIP ViT-L/14's text encoder shapes give its config
        var text = new Dictionary<string, Tensor>
        {
            ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = empty(new long[] { 49408, 768 }, device: META),
            ["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] = empty(new long[] { 77, 768 }, device: META),
        };
        for (int i = 0; i < 12; i++) text[$"cond_stage_model.transformer.text_model.encoder.layers.{i}.mlp.fc1.weight"] = empty(new long[] { 3072, 768 }, device: META);
        Assert.Equal(ClipTextConfig.StableDiffusion15, StableDiffusionCheckpoint.InferTextConfig(text));
    }

    [Fact]
    public void OtherFamiliesAndBrokenFilesAreOneLineErrors()
    {
        using var scope = NewDisposeScope();
        var tiny = Data("sd_single_file", "tiny-sd.safetensors");
        var noTokenizer = Assert.Throws<DmdInputException>(() => StableDiffusion.LoadSingleFile(tiny));
        Assert.Contains("tokenizer", noTokenizer.Message);
        // without a config folder the tiny model is read as SD v1.x, whose 32 groups do not divide its 8 channels: the error says what to pass
        var inferred = Assert.Throws<DmdInputException>(() => StableDiffusion.LoadSingleFile(tiny, new SingleFileOptions { TokenizerFolder = Path.Combine(Folder, "tokenizer") }));
        Assert.Contains("--config", inferred.Message);

        var file = Sd15Shapes();
        file["model.diffusion_model.input_blocks.1.1.proj_in.weight"] = empty(new long[] { 320, 320 }, device: META);
        Assert.Contains("2.x", Assert.Throws<DmdInputException>(() => StableDiffusionCheckpoint.InferUnetConfig(file)).Message);
        var openClip = new Dictionary<string, Tensor> { ["cond_stage_model.model.token_embedding.weight"] = empty(new long[] { 49408, 1024 }, device: META) };
        Assert.Contains("OpenCLIP", Assert.Throws<DmdInputException>(() => StableDiffusionCheckpoint.InferTextConfig(openClip)).Message);

        // a tensor missing from the file is named
        var dir = TestUtil.TempDir();
        var tensors = StableDiffusionCheckpoint.Read(tiny);
        tensors.Remove("model.diffusion_model.out.2.bias");
        var broken = Path.Combine(dir, "broken.safetensors");
        Safetensors.SaveStateDict(broken, tensors);
        var missing = Assert.Throws<DmdInputException>(() => StableDiffusion.LoadSingleFile(broken, new SingleFileOptions { ConfigFolder = Folder }));
        Assert.Contains("model.diffusion_model.out.2.bias", missing.Message);
        Assert.DoesNotContain('\n', missing.Message);
        Assert.Contains("convert-sd", Assert.Throws<DmdInputException>(() => StableDiffusion.Load(tiny)).Message);
        // passed where a teacher or model of this project is expected, it is named for what it is
        foreach (var args in new[] { new[] { "distill", "--teacher", tiny, "--out", TestUtil.TempDir() }, new[] { "eval", "--model", tiny },
                                     new[] { "pairs", "--teacher", tiny, "--prompts", tiny, "--out", TestUtil.TempDir() } })
        {
            var (code, text) = CliTests.Run(args);
            Assert.Equal(2, code);
            Assert.Contains("is a Stable Diffusion single-file checkpoint: convert it once with `dmd convert-sd", text);
        }
    }
}
