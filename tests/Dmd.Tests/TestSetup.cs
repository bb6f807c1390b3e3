using System.Runtime.CompilerServices;
using TorchSharp;

// Tests run one at a time. TorchSharp 0.107 passes implicit Scalars (even the alpha = 1 of every `a + b`)
// to native code without keeping them alive, and frees them in a finalizer: a garbage collection triggered
// by another thread while an op runs can free its Scalar mid-call ("Unknown scalar type", or a Scalar read as
// garbage). Parallel test classes allocate on several threads at once and made this happen in about one run
// in two; with one test thread the thread in native code is the only one allocating.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]

namespace Dmd.Tests;

internal static class TestSetup
{
    /// <summary>Point-data models are tiny: one libtorch thread is fastest and avoids OpenMP spin-waiting.</summary>
    [ModuleInitializer]
    internal static void OneThread()
    {
        Dmd.NativeSetup.Apply(); // before libtorch runs anything (see there)
        torch.set_num_threads(1);
    }
}
