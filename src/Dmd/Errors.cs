namespace Dmd;

/// <summary>
/// An expected failure (bad input, a run that cannot continue, a file that cannot be written): its message says
/// what is wrong and how to fix it, in one line, and the command-line tool prints just that.
/// </summary>
public class DmdException : Exception
{
    /// <summary>Creates the exception with a one-line message (what is wrong and how to fix it) and an optional cause.</summary>
    public DmdException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Raised for bad user input (options, paths, files, shapes): the message says what is wrong and how to fix it.</summary>
public sealed class DmdInputException : DmdException
{
    /// <summary>Creates the exception with a one-line message (what is wrong and how to fix it) and an optional cause.</summary>
    public DmdInputException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A training run whose loss or weights stopped being finite; the last good checkpoint is kept.</summary>
public sealed class TrainingDivergedException : DmdException
{
    /// <summary>Creates the exception with a message naming the non-finite value and the checkpoint that is kept.</summary>
    public TrainingDivergedException(string message) : base(message) { }
}
