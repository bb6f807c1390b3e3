using System.Runtime.CompilerServices;
using TorchSharp;

namespace Dmd.Tests;

internal static class TestSetup
{
    /// <summary>xunit runs test classes in parallel: one libtorch thread each avoids OpenMP oversubscription.</summary>
    [ModuleInitializer]
    internal static void OneThread() => torch.set_num_threads(1);
}
