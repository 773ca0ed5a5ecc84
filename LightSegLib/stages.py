"""The stages one segmentation reports progress in: named once for the engine, the CLI's JSON stream and the Slicer
logic's progress bar (which reads them from the child process)."""
READ = "read"
INFER = "infer"
POSTPROCESS = "postprocess"
WRITE = "write"
