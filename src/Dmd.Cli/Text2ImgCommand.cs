using System.CommandLine;
using System.Globalization;
using Dmd.IO;
using Dmd.Pipelines;
using Spectre.Console;
using TorchSharp;

namespace Dmd.Cli;

/// <summary>`dmd text2img`: Stable Diffusion text-to-image from a diffusers folder (diffusers' StableDiffusionPipeline with an Euler scheduler).</summary>
internal static class Text2ImgCommand
{
    public static Command Build()
    {
        var cmd = new Command("text2img", "Generate images from a text prompt with a Stable Diffusion model (a diffusers folder: tokenizer/, text_encoder/, unet/, vae/, scheduler/); " +
                                          "as diffusers' StableDiffusionPipeline with EulerDiscreteScheduler; or with a generator distilled from one (a `dmd distill` run folder), in its 1 (or K) steps. " +
                                          "Writes one PNG, a grid for --n > 1.");
        var model = new Option<string>("--model") { Description = "a diffusers Stable Diffusion folder (e.g. a download of runwayml/stable-diffusion-v1-5 with safetensors weights), or a `dmd distill` run folder of one (its generator, with the teacher's text encoder and VAE)", Required = true };
        var prompt = new Option<string>("--prompt") { Description = "the text prompt", Required = true };
        var negative = new Option<string>("--negative-prompt") { Description = "the unconditional prompt of guidance (default: the empty prompt)", DefaultValueFactory = _ => "" };
        var steps = new Option<int>("--steps") { Description = "sampling steps on the scheduler's sigmas (a distilled generator: how many of its steps, default all)", DefaultValueFactory = _ => 25 };
        var guidance = new Option<double>("--guidance") { Description = "classifier-free guidance scale (1 or less: none)", DefaultValueFactory = _ => 7.5 };
        var seed = new Option<long>("--seed") { Description = "image i starts from latents drawn with seed + i (torch's CPU generator)", DefaultValueFactory = _ => 0 };
        var n = new Option<int>("--n") { Description = "number of images", DefaultValueFactory = _ => 1 };
        var height = new Option<int?>("--height") { Description = "image height in pixels (default: the UNet's sample_size times the VAE's downscaling factor, 64 x 8 = 512 for SD v1.5)" };
        var width = new Option<int?>("--width") { Description = "image width in pixels (default: as height; height defaults to width likewise)" };
        var sampler = new Option<string>("--sampler") { Description = "euler (diffusers' EulerDiscreteScheduler) or heun (EDM's Heun on the same sigmas, 2N-1 evaluations)", DefaultValueFactory = _ => "euler" };
        var batch = new Option<int>("--batch") { Description = "images per network batch", DefaultValueFactory = _ => 4 };
        var scale = new Option<int>("--scale") { Description = "enlarge each image this many times in the PNG (nearest neighbour; small models' images are tiny)", DefaultValueFactory = _ => 1 };
        var outOpt = new Option<string>("--out", "-o") { Description = "output PNG (a grid when --n > 1)", DefaultValueFactory = _ => "text2img.png" };
        foreach (var o in new Option[] { model, prompt, negative, steps, guidance, seed, n, height, width, sampler, batch, scale, outOpt }) cmd.Options.Add(o);
        cmd.Options.Add(Devices.Option);
        cmd.SetAction(r =>
        {
            Common.RequirePositive(r, steps, n, height, width, batch, scale);
            var outPath = r.GetValue(outOpt)!;
            if (!outPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) throw new DmdInputException($"--out {outPath}: give a .png file");
            var options = new TextToImageOptions
            {
                NegativePrompt = r.GetValue(negative) ?? "", Steps = r.GetValue(steps), Guidance = r.GetValue(guidance), Seed = r.GetValue(seed),
                Height = r.GetValue(height) ?? r.GetValue(width), Width = r.GetValue(width) ?? r.GetValue(height), Sampler = r.GetValue(sampler)!,
                Batch = r.GetValue(batch),
            };
            options.Validate();   // before the minutes a full-size model takes to load
            var modelPath = r.GetValue(model)!;
            var generatorFile = Path.Combine(modelPath, Dmd.Distillation.OneStepGenerator.FileName);
            bool distilled = File.Exists(generatorFile) && !TextToImageDistillation.IsPipelineFolder(modelPath);
            using var sd = StableDiffusion.Load(distilled ? DistilledTeacher(modelPath) : modelPath, Devices.Get(r));
            Threads.Apply(r, smallModel: false);
            int count = r.GetValue(n);
            TextToImageResult res = null!;
            var prompts = Enumerable.Repeat(r.GetValue(prompt)!, count).ToList();
            if (distilled)
            {
                var generator = Dmd.Distillation.OneStepGenerator.Load(generatorFile);
                generator.Net.to(sd.Device);
                int? k = r.GetResult(steps) is { Implicit: false } ? r.GetValue(steps) : null;
                res = sd.Generate(generator, prompts, r.GetValue(seed), k, r.GetValue(batch));
                options = options with { Sampler = "generator", Steps = res.Nfe, Guidance = 1 };
            }
            else
                ProgressView.Run(report => res = sd.Generate(prompts, options, onEval: (d, t) => report("text2img", d, t, null)));
            var dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (dir is not null) Directory.CreateDirectory(dir);
            ImageGrid.Save(outPath, res.Images, columns: (int)Math.Ceiling(Math.Sqrt(count)), scale: r.GetValue(scale));
            AnsiConsole.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"{count} image(s) {res.Images.shape[3]}x{res.Images.shape[2]}, {options.Sampler} {options.Steps} steps ({res.Nfe} NFE), guidance {options.Guidance}, " +
                $"{res.Seconds:F1} s ({Wording.Threads(TorchSharp.torch.get_num_threads())}); wrote {outPath}")));
            return 0;
        });
        return cmd;
    }

    /// <summary>The text-to-image teacher a distillation run folder names in its config.json (for its tokenizer, text encoder and VAE).</summary>
    static string DistilledTeacher(string runDir)
    {
        var configPath = Path.Combine(runDir, "config.json");
        var teacher = File.Exists(configPath) ? System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configPath))?["Teacher"]?.GetValue<string>() : null;
        if (teacher is null || !TextToImageDistillation.IsPipelineFolder(teacher))
            throw new DmdInputException($"{runDir} holds a generator but its config.json names no text-to-image teacher folder (tokenizer/, text_encoder/, unet/, vae/, scheduler/); " +
                                        "text2img needs a Stable Diffusion folder or a `dmd distill` run of one");
        return teacher;
    }
}
