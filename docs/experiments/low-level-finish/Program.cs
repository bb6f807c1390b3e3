// How near the guided teacher takes the one-step student's output when it finishes from a low noise level (README,
// "A chain that starts from the one-step student"). Run from the repository root:
//   dotnet run -c Release --project docs/experiments/low-level-finish -- SEED N THREADS SOURCE FINISH...
// SOURCE: "one" (the shipped one-step student's output for the noise and labels of `dmd eval --seed SEED`) or "data"
// (the first N training images with their labels). Each FINISH is SIGMA:HEUN:CFG[:LO,HI] and measures (FD-FMNIST,
// class accuracy, precision, recall) the source re-noised to SIGMA with seeded noise, then the teacher's Heun sampler
// (HEUN steps from SIGMA) at CFG on sigma in (LO, HI] (every level without it). SIGMA 0 measures the source itself.
// (its namespaces are imported in LowLevelFinish.csproj)

long seed = long.Parse(args[0]);
int n = int.Parse(args[1]);
torch.set_num_threads(int.Parse(args[2]));
string source = args[3];
const int Batch = 100;

var oneStep = OneStepGenerator.Load("models/fashion-mnist-student");
var (teacherNet, _) = DenoiserFile.Load("models/fashion-mnist-teacher", "teacher.safetensors");
teacherNet.eval();
var shape = oneStep.Spec!.SampleShape.Select(s => (long)s).ToArray();
using var judge = FdFmnist.Load();

// the source images and labels, without gradients
Tensor x0, y;
using (no_grad())
{
    if (source == "one")
    {
        (var z, y) = Judge.EvalDraw(oneStep.Spec.SampleShape, oneStep.Spec.LabelDim, seed, n);
        var parts = new List<Tensor>();
        for (int i = 0; i < n; i += Batch)
            parts.Add(oneStep.Denoise(z[i..Math.Min(n, i + Batch)] * oneStep.SigmaMax, 0, y[i..Math.Min(n, i + Batch)]).detach());
        x0 = cat(parts);
    }
    else if (source == "data")
    {
        var train = FashionMnist.Load(test: false, padTo32: true);
        x0 = ImageDataset.ToFloat(train.Images[..n]);
        y = Rng.OneHot(train.ClassIndex![..n], oneStep.Spec.LabelDim);
    }
    else throw new ArgumentException($"SOURCE '{source}': use one or data");
}

foreach (var finish in args.Skip(4))
{
    var f = finish.Split(':');
    double sigma = double.Parse(f[0], System.Globalization.CultureInfo.InvariantCulture);
    Tensor x = x0;
    string what = $"{source}";
    if (sigma > 0)
    {
        int heun = int.Parse(f[1]);
        double cfg = double.Parse(f[2], System.Globalization.CultureInfo.InvariantCulture);
        var interval = f.Length > 3 ? GuidanceInterval.Parse(f[3], "interval") : null;
        var teacher = GuidedDenoiser.Wrap(teacherNet, cfg, interval);
        var sigmas = KarrasSchedule.Sigmas(heun, KarrasSchedule.DefaultSigmaMin, sigma);
        using var g = new Generator((ulong)(seed + 1_000_003));
        var noise = Rng.Normal(new long[] { n }.Concat(shape).ToArray(), g);
        var parts = new List<Tensor>();
        using (no_grad())
            for (int i = 0; i < n; i += Batch)
            {
                int j = Math.Min(n, i + Batch);
                parts.Add(Samplers.Heun(teacher, x0[i..j] + sigma * noise[i..j], y[i..j], sigmas).Samples.detach());
            }
        x = cat(parts);
        what += $", re-noised to sigma {sigma:G3}, teacher Heun {heun} at CFG {cfg:G} on {(interval?.ToString() ?? "every level")}";
    }
    Judge.Report(judge, what, x, y);
}
