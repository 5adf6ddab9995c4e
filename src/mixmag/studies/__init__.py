"""Studies built on the pipeline: the demo, the method benchmark (and its replicates, design space and label
efficiency), the experiment grid and their statistics. Above `stages/`, which holds the pipeline stages only."""
