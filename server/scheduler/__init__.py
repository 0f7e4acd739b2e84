"""The scheduler: the domain layer behind the job and worker routes.

* ``writer``     the one writer of job status (compare-and-set on what the caller read), and events
* ``claims``     matching and claiming jobs for a host, in batches, each claim an attempt
* ``completion`` results (inline or streamed) and reports of attempts
* ``heartbeat``  the heartbeat policy (pure) and liveness kept in memory, written in batches
* ``reaper``     lost hosts' attempts back to the queue, one reaper at a time
* ``wakeup``     waking long-polling workers: at most as many as there are new jobs
* ``lifecycle``  submission (one or thousands), hold, release, delete, inputs ready

Routes parse, call one of these, and reply.
"""
