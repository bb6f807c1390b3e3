using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using Dmd.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// A K-step generator with a network per step (<c>--separate-step-networks</c>): the copies start as the network they
/// are copied from, each level goes to its own copy, training moves only the copy of the level it trains, with the
/// gradient the shared network would get there.
/// </summary>
public class StepNetworksTests
{
    static readonly NetworkSpec Spec = TestUtil.TinyPointSpec;
    static readonly double[] Levels = { 20, 3, 0.5 };

    static EdmPrecond Teacher()
    {
        var net = Spec.Build();
        TestUtil.Perturb(net, 4, 0.1);
        TrainingUtils.Freeze(net);
        return net;
    }

    [Fact]
    public void CopiesStartAsTheSourceAndEachLevelRunsItsOwnCopy()
    {
        var teacher = Teacher();
        var net = OneStepGenerator.BuildNet(Spec, 3);
        OneStepGenerator.CopyNet(teacher, net);
        var own = new OneStepGenerator(net, Levels);
        var shared = new OneStepGenerator(teacher, Levels);
        Assert.Equal(3, own.StepNetworkCount);
        Assert.Equal(0, shared.StepNetworkCount);
        Assert.Contains(net.named_parameters(), p => p.name.StartsWith("model.steps.2."));

        var z = Rng.Normal(new long[] { 6, 2 }, new Generator(1));
        var y = Rng.OneHot(tensor(new long[] { 0, 1, 2, 0, 1, 2 }), 3);
        var noise = OneStepGenerator.SeededStepNoise(Spec.SampleShape, 3, 6, 3);
        // a mixed batch: two rows at each level, in no order
        var sigma = tensor(new[] { 3.0, 20, 0.5, 0.5, 3, 20 }, dtype: ScalarType.Float32);
        var x = Rng.Normal(new long[] { 6, 2 }, new Generator(2)) * sigma.unsqueeze(1);
        using (no_grad())
        {
            Assert.True(TestUtil.Same(shared.Generate(z, y, noise), own.Generate(z, y, noise)));
            Assert.True(allclose(teacher.forward(x, sigma, y), net.forward(x, sigma, y), 1e-5, 1e-6));

            // a change to the last copy changes the last step only, and in a mixed batch only that level's rows
            var last = ((StepNetworks)net.Backbone)[2];
            TestUtil.Perturb(last, 9, 0.1);
            Assert.True(TestUtil.Same(shared.Generate(z, y, noise, steps: 2), own.Generate(z, y, noise, steps: 2)));
            Assert.False(TestUtil.Same(shared.Generate(z, y, noise), own.Generate(z, y, noise)));
            var changed = (teacher.forward(x, sigma, y) - net.forward(x, sigma, y)).abs().amax(1).gt(1e-4);
            Assert.Equal(new[] { false, false, true, true, false, false }, changed.data<bool>().ToArray());
            Assert.Throws<InvalidOperationException>(() => net.forward(x, full(6, 7.0f), y)); // no step's level
        }
        Assert.Throws<DmdInputException>(() => new OneStepGenerator(OneStepGenerator.BuildNet(Spec, 3), new[] { 20.0, 1 }));
        Assert.Throws<DmdInputException>(() => OneStepGenerator.CopyNet(net, Spec.Build()));
        Assert.Throws<DmdInputException>(() => OneStepGenerator.CopyNet(net, OneStepGenerator.BuildNet(Spec, 2)));
        Assert.Throws<DmdInputException>(() => new DmdConfig { SeparateStepNetworks = true }.Validate());
    }

    /// <summary>
    /// From the same start and draws, a step with separate networks gives the trained level's copy exactly the gradient
    /// the shared network gets, and no other copy any; over steps each copy moves only when its level is trained.
    /// </summary>
    [Fact]
    public void TrainingMovesOnlyTheTrainedLevelsCopyWithTheSharedNetworksGradient()
    {
        var teacher = Teacher();
        var cfg = new DmdConfig
        {
            Mode = DmdMode.DmOnly, BatchSize = 8, LearningRate = 1e-3, WarmupSteps = 0, FakeUpdatesPerStep = 2, Seed = 5,
            GeneratorSteps = 3, SigmaMax = 20, GeneratorSigmaMin = 0.5, EmaDecay = 0.9, FakePerLevel = true, // both draw the levels alike
            GuidanceReal = 2, // the fake starts as the teacher: a real score other than it gives the first step a gradient
        };
        using var shared = new DmdTrainer(teacher, Spec, cfg, pairs: null);
        using var own = new DmdTrainer(teacher, Spec, cfg with { SeparateStepNetworks = true }, pairs: null);
        Assert.Equal(3, own.Generator.StepNetworkCount);
        Assert.Equal(3, own.Ema!.StepNetworkCount);
        var copies = (StepNetworks)own.Generator.Net.Backbone;
        var sharedLosses = shared.TrainStep();
        var ownLosses = own.TrainStep();
        Assert.Equal(sharedLosses["loss_dm"], ownLosses["loss_dm"]);
        var trained = Enumerable.Range(0, 3).Where(k => copies[k].parameters().Any(p => p.grad is not null)).ToArray();
        Assert.Single(trained);
        Assert.Contains(copies[trained[0]].parameters(), p => p.grad!.abs().max().item<float>() > 0);
        var grads = copies[trained[0]].named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!);
        foreach (var (name, p) in shared.Generator.Net.Backbone.named_parameters())
            Assert.True(TestUtil.Same(p.grad!, grads[name]), $"{name}: another gradient than the shared network's");

        var levelsSeen = new HashSet<int>();
        for (int step = 0; step < 8; step++)
        {
            var before = Enumerable.Range(0, 3).Select(k => copies[k].parameters().Select(p => p.detach().clone()).ToArray()).ToArray();
            own.TrainStep();
            var moved = Enumerable.Range(0, 3).Where(k => copies[k].parameters().Zip(before[k]).Any(t => !TestUtil.Same(t.First, t.Second))).ToArray();
            Assert.Single(moved);
            levelsSeen.Add(moved[0]);
        }
        Assert.True(levelsSeen.Count > 1, "the trained level should vary from step to step");
    }
}
