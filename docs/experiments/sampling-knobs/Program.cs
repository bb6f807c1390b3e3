// Sampling-time knobs of the shipped students, without retraining (docs/dmd2-experiments.md, "Carrying the noise between steps").
// Run from the repository root:
//   dotnet run -c Release --project docs/experiments/sampling-knobs -- SEED N THREADS
// It draws N noises and labels as `dmd eval --seed SEED` does and measures (FD-FMNIST, class accuracy, precision, recall):
//   - the one-step student with its noise scaled by a temperature t (input t sigma_max z at level sigma_max);
//   - the 4-step student with part of each re-noising deterministic: before step k+1 the output x0 of step k is
//     re-noised as x0 + s_(k+1) (eta n_hat + sqrt(1 - eta^2) n_k), n_hat = (x - x0) / s_k the noise its own input
//     carried (eta 0: DMD2's fresh noise, as trained; eta 1: a DDIM-like deterministic chain).
// (its namespaces are imported in SamplingKnobs.csproj)

long seed = long.Parse(args[0]);
int n = int.Parse(args[1]);
torch.set_num_threads(int.Parse(args[2]));
const int Batch = 100;

var oneStep = OneStepGenerator.Load("models/fashion-mnist-student");
var fourStep = OneStepGenerator.Load("models/fashion-mnist-student-4step");
var levels = fourStep.Sigmas;
var (z, y) = Judge.EvalDraw(fourStep.Spec!.SampleShape, fourStep.Spec.LabelDim, seed, n);
var stepNoise = OneStepGenerator.SeededStepNoise(fourStep.Spec.SampleShape, seed, n, fourStep.Steps);
using var judge = FdFmnist.Load();

Tensor InBatches(Func<Tensor, Tensor, IReadOnlyList<Tensor>, Tensor> f)
{
    var parts = new List<Tensor>();
    using var _ = no_grad();
    for (int i = 0; i < n; i += Batch)
    {
        int j = Math.Min(n, i + Batch);
        parts.Add(f(z[i..j], y[i..j], stepNoise.Select(t => t[i..j]).ToArray()).detach());
    }
    return cat(parts);
}

void Report(string what, Tensor x) => Judge.Report(judge, what, x, y);

var which = args.Length > 3 ? args[3] : "both";
if (which != "four")
    foreach (var t in new[] { 1.0, 1.03, 1.06, 1.1 })
        Report($"one-step student, temperature {t}", InBatches((zb, yb, _) => oneStep.Denoise(zb * (t * oneStep.SigmaMax), 0, yb)));
if (which != "one")
    foreach (var eta in new[] { 0.0, 0.3, 0.6, 0.9 })
        Report($"4-step student, eta {eta}", InBatches((zb, yb, noise) =>
        {
            var x = zb * levels[0];
            var x0 = fourStep.Denoise(x, 0, yb);
            for (int k = 1; k < levels.Count; k++)
            {
                var nHat = (x - x0) / levels[k - 1];
                x = x0 + levels[k] * (eta * nHat + Math.Sqrt(1 - eta * eta) * noise[k - 1]);
                x0 = fourStep.Denoise(x, k, yb);
            }
            return x0;
        }));
