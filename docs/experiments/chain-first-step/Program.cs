// How much of the shipped 4-step student's first step survives its chain (README, "Where along the chain the 4-step
// student falls behind"). Run from the repository root:
//   dotnet run -c Release --project docs/experiments/chain-first-step -- SEED N THREADS [HEUN_STEPS [students]]
// It draws N noises and labels as `dmd eval --seed SEED` does and measures (FD-FMNIST, class accuracy, precision, recall):
//   - the first step's output of the 4-step student and, in its place, the one-step student's output;
//   - each of the two re-noised to the second level (sigma 18.6) with the chain's own noise, then the 4-step student's
//     steps 2-4, or the teacher's Heun (HEUN_STEPS, default 10) at CFG 2 on sigma in (0.28, 5.42] (its real score);
//   - the first N training images re-noised to sigma 18.6 the same way and finished by the same teacher: what the
//     finishing itself costs when the state at sigma 18.6 is exactly the data's (left out with "students").
using Dmd;
using Dmd.Data;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Metrics;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

long seed = long.Parse(args[0]);
int n = int.Parse(args[1]);
torch.set_num_threads(int.Parse(args[2]));
int heunSteps = args.Length > 3 ? int.Parse(args[3]) : 10;
bool withImages = args.Length <= 4 || args[4] != "students";
const int Batch = 100;

var oneStep = OneStepGenerator.Load("models/fashion-mnist-student");
var fourStep = OneStepGenerator.Load("models/fashion-mnist-student-4step");
var (teacherNet, _) = DenoiserFile.Load("models/fashion-mnist-teacher", "teacher.safetensors");
teacherNet.eval();
var teacher = GuidedDenoiser.Wrap(teacherNet, 2, GuidanceInterval.Parse("0.28,5.42", "guidance"));
var levels = fourStep.Sigmas;
var finishSigmas = KarrasSchedule.Sigmas(heunSteps, KarrasSchedule.DefaultSigmaMin, levels[1]);

// the noise and labels of `dmd eval --seed`, and the chain's noise between steps
var (z, y) = Judge.EvalDraw(fourStep.Spec!.SampleShape, fourStep.Spec.LabelDim, seed, n);
var stepNoise = OneStepGenerator.SeededStepNoise(fourStep.Spec.SampleShape, seed, n, fourStep.Steps);
using var judge = FdFmnist.Load();

// f(first, labels, stepNoise) batch by batch, without gradients
Tensor InBatches(Tensor first, Tensor labels, Func<Tensor, Tensor, IReadOnlyList<Tensor>, Tensor> f)
{
    var parts = new List<Tensor>();
    using var _ = no_grad();
    for (int i = 0; i < n; i += Batch)
    {
        int j = Math.Min(n, i + Batch);
        parts.Add(f(first[i..j], labels[i..j], stepNoise.Select(t => t[i..j]).ToArray()).detach());
    }
    return cat(parts);
}

void Report(string what, Tensor x, Tensor labels) => Judge.Report(judge, what, x, labels);

Tensor RestOfChain(Tensor x0, Tensor labels, IReadOnlyList<Tensor> noise)
{
    for (int k = 1; k < fourStep.Steps; k++) x0 = fourStep.Denoise(x0 + levels[k] * noise[k - 1], k, labels);
    return x0;
}
Tensor Teacher(Tensor x0, Tensor labels, IReadOnlyList<Tensor> noise) =>
    Samplers.Heun(teacher, x0 + levels[1] * noise[0], labels, finishSigmas).Samples;

var firstOf4 = InBatches(z, y, (zb, yb, _) => fourStep.Denoise(zb * levels[0], 0, yb));
var firstOf1 = InBatches(z, y, (zb, yb, _) => oneStep.Denoise(zb * oneStep.SigmaMax, 0, yb));
Report("4-step student, its first step alone", firstOf4, y);
Report("one-step student", firstOf1, y);
Report("4-step student, all four steps", InBatches(firstOf4, y, RestOfChain), y);
Report("one-step student, then the 4-step student's steps 2-4", InBatches(firstOf1, y, RestOfChain), y);
Report($"4-step student's first step, then the teacher (Heun {heunSteps} from sigma {levels[1]:G3})", InBatches(firstOf4, y, Teacher), y);
Report($"one-step student, then the teacher (Heun {heunSteps} from sigma {levels[1]:G3})", InBatches(firstOf1, y, Teacher), y);

if (!withImages) return;
var train = FashionMnist.Load(test: false, padTo32: true);
var images = ImageDataset.ToFloat(train.Images[..n]);
var imageLabels = Rng.OneHot(train.ClassIndex![..n], fourStep.Spec.LabelDim);
Report($"{n} training images, then the teacher (Heun {heunSteps} from sigma {levels[1]:G3})", InBatches(images, imageLabels, Teacher), imageLabels);
