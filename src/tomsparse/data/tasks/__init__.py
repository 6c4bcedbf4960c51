"""ToM tasks: the task model, the reference-format loaders, the built-in bank and ToMi.

Public entry points: ``load_tasks(spec)`` (``builtin``, ``builtin:train``, ``tomi`` or a file)
and ``gradient_prompts(spec)`` (ToM prompts with answers for the sensitivity scores).
"""

from tomsparse.data.tasks.loaders import (
                    gradient_prompts,
                    load_task_file,
                    load_tasks,
                    read_prompt_file,
)
from tomsparse.data.tasks.model import (
                    FAMILIES,
                    REFERENCE_FAMILIES,
                    GradientPrompt,
                    Prompt,
                    Task,
                    TaskSet,
                    first_word,
)

__all__ = ["FAMILIES", "REFERENCE_FAMILIES", "GradientPrompt", "Prompt", "Task", "TaskSet",
           "first_word", "gradient_prompts", "load_task_file", "load_tasks",
           "read_prompt_file"]

