// How much of the DM term's gradient noise comes from the noise level and noise drawn per sample, and how much from the
// batch itself (docs/dmd2-experiments.md, "Several noise draws per sample in the DM term"). Run from the repository root:
//   dotnet run -c Release --project docs/experiments/dm-gradient-noise -- CHECKPOINT_STEP_FOLDER [BATCHES DRAWS THREADS]
// CHECKPOINT_STEP_FOLDER: a `dmd distill` checkpoint of a 4-step run with one fake denoiser per level (its generator's
// moving average and its fakes), e.g. runs/r4cn4/checkpoint/step-00000075. For each level of the generator, BATCHES
// (default 8) batches of 16 (z, labels) and for each DRAWS (default 8) draws of the DM term's levels and noise; each
// draw's gradient of loss_dm with respect to the generator's weights (the real score: the teacher at CFG 2 on sigma in
// (0.28, 5.42], as the shipped 4-step student's run). Printed per level: the mean squared distance of one draw's gradient
// from its batch's mean over draws (the level-and-noise part of the variance, which D draws divide by D), and the spread
// of the batch means (the batch's part, minus the draws' share in it), against the squared norm of the mean gradient.
using Dmd;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

string step = args[0];
int batches = args.Length > 1 ? int.Parse(args[1]) : 8;
int draws = args.Length > 2 ? int.Parse(args[2]) : 8;
torch.set_num_threads(args.Length > 3 ? int.Parse(args[3]) : 1);
const int Batch = 16;

var gen = OneStepGenerator.Load(step);
foreach (var p in gen.Net.parameters()) p.requires_grad = true;
var (teacherNet, spec) = DenoiserFile.Load("models/fashion-mnist-teacher", "teacher.safetensors");
var real = GuidedDenoiser.Wrap(teacherNet, 2, GuidanceInterval.Parse("0.28,5.42", "guidance"));
EdmPrecond Fake(string file)
{
    var net = spec.Build();
    net.load_state_dict(TorchSharp.PyBridge.Safetensors.LoadStateDict(Path.Combine(step, file)));
    net.eval();
    return net;
}
var fakes = new[] { "fake.safetensors", "fake-step2.safetensors", "fake-step3.safetensors", "fake-step4.safetensors" }.Select(Fake).ToArray();
var grid = KarrasSchedule.AscendingGrid(1000, 0.002, 80);
using var g = new Generator(7);
var shape = new long[] { Batch }.Concat(spec.SampleShape.Select(s => (long)s)).ToArray();

Tensor Flat() => cat(gen.Net.parameters().Select(p => p.grad!.flatten()).ToArray());

for (int level = 0; level < gen.Steps; level++)
{
    var means = new List<Tensor>();
    double within = 0;
    for (int b = 0; b < batches; b++)
    {
        var z = Rng.Normal(shape, g);
        var y = Rng.OneHotLabels(10, Batch, g)!;
        var noise = Enumerable.Range(0, level).Select(_ => Rng.Normal(shape, g)).ToArray();
        Tensor xIn;
        using (no_grad()) xIn = gen.Input(z, y, level, noise);
        var each = new List<Tensor>();
        for (int d = 0; d < draws; d++)
        {
            gen.Net.zero_grad();
            var x = gen.Denoise(xIn, level, y);
            var sigma = grid.index_select(0, Rng.Integers(20, 981, Batch, g));
            DmdLoss.DistributionMatching(x, real, fakes[level], sigma, y, g).backward();
            each.Add(Flat().clone());
        }
        var all1 = torch.stack(each);
        var mean = all1.mean(new long[] { 0 });
        within += (all1 - mean).square().sum(1).mean().item<float>() * draws / (draws - 1) / batches;
        means.Add(mean);
    }
    var all = torch.stack(means);
    var grand = all.mean(new long[] { 0 });
    double spreadOfMeans = (all - grand).square().sum(1).mean().item<float>() * batches / (batches - 1);
    double between = Math.Max(0, spreadOfMeans - within / draws);
    double signal = grand.square().sum().item<float>();
    Console.WriteLine($"level {level + 1} (sigma {gen.Sigmas[level]:G3}): one draw's variance {within + between:G3} = level-and-noise {within:G3} " +
                      $"({100 * within / (within + between):F0} %) + batch {between:G3}; squared norm of the mean gradient {signal:G3}; " +
                      $"variance with 4 draws {within / 4 + between:G3} ({100 * (within / 4 + between) / (within + between):F0} % of one draw's)");
}
