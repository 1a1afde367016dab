"""Project hooks: study progress and the run's verdict."""


class StudyRunHooks:
    """Report 'job k of n' and fail the run at the end when any job failed."""
