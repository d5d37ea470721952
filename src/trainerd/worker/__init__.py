"""The worker: the only package that imports torch, transformers and peft.

`python -m trainerd.worker JOB_DIR` trains one attempt of one job and reports through its
exit status (trainerd.jobs.ExitCode). It never moves job directories.
"""
