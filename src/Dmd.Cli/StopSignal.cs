using System.Runtime.InteropServices;

namespace Dmd.Cli;

/// <summary>
/// Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop cleanly (the run saves its checkpoint and
/// generator and can be continued); a second one ends the process at once.
/// </summary>
internal sealed class StopSignal : IDisposable
{
    private volatile bool requested;
    private readonly PosixSignalRegistration[] registrations;

    public StopSignal()
    {
        registrations = new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM }
            .Select(s => PosixSignalRegistration.Create(s, ctx =>
            {
                if (requested) return; // second signal: default handling ends the process
                ctx.Cancel = true;
                requested = true;
                Console.Error.WriteLine("stopping after this step (checkpoint and generator are saved); signal again to end at once");
            }))
            .ToArray();
    }

    public bool Requested => requested;

    public void Dispose()
    {
        foreach (var r in registrations) r.Dispose();
    }
}
