using Dmd.Distillation;
using Dmd.Training;

namespace Dmd.Pipelines;

/// <summary>Named budgets of the 2-D experiment.</summary>
public static class Toy2dPresets
{
    /// <summary>
    /// About a minute per distillation on one quiet core (three with the ablations): what the end-to-end test runs. The
    /// generator's weights are averaged (decay 0.99): without the average the student/teacher energy-distance ratio of
    /// this budget spread from 1.26x to 3.26x over teacher seeds, DMD seeds and 1 or 2 threads; with it 1.64x-1.95x.
    /// </summary>
    public static Toy2dConfig Quick => new()
    {
        TrainPoints = 20_000, EvalSamples = 5000, PairCount = 2000, Width = 128, Depth = 3,
        Teacher = new TeacherConfig { Steps = 1500, BatchSize = 256, CheckpointEvery = 500 },
        Dmd = new DmdConfig { Steps = 1500, BatchSize = 128, RegressionBatchSize = 128, WarmupSteps = 100, LearningRate = 2e-4, CheckpointEvery = 300, FakeUpdatesPerStep = 5, EmaDecay = 0.99 },
    };
}
