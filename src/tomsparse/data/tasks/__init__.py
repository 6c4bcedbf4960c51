"""ToM tasks: the task model, the reference-format loaders, the built-in bank and ToMi.

Public entry points: ``load_tasks(spec)`` (``builtin``, ``builtin:train``, ``tomi`` or a file)
and ``gradient_prompts(spec)`` (ToM prompts with answers for the sensitivity scores). A task
file in the reference's format renders as the reference renders it unless it declares
otherwise (``RENDERERS``); generated answers match by one of ``MATCH_RULES``.
"""

from tomsparse.data.tasks.loaders import (
                    gradient_prompts,
                    load_task_file,
                    load_tasks,
                    read_prompt_file,
)
from tomsparse.data.tasks.model import (
                    FAMILIES,
                    MATCH_RULES,
                    REFERENCE_FAMILIES,
                    RENDERERS,
                    GradientPrompt,
                    Prompt,
                    Task,
                    TaskSet,
                    answer_word,
                    cluster_of,
                    first_word,
                    reference_first_word,
)

__all__ = ["FAMILIES", "MATCH_RULES", "REFERENCE_FAMILIES", "RENDERERS", "GradientPrompt",
           "Prompt", "Task", "TaskSet", "answer_word", "cluster_of", "first_word",
           "gradient_prompts", "load_task_file", "load_tasks", "read_prompt_file",
           "reference_first_word"]
