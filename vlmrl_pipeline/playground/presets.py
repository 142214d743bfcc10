"""Preset examples for the reward playground: one click each, chosen to show where the rewards' edges are.

Each preset is a complete ``POST /api/score`` request plus its name and a short explanation in English and
Chinese. The explanations quote numbers; the tests recompute every preset with the real reward functions, so
a change to the rewards that makes an explanation wrong fails a test instead of misleading a reader.
"""

from __future__ import annotations

_THINK = "<REASONING>The tallest bar reaches 991 on the y-axis.</REASONING>\n"

PRESETS: tuple[dict, ...] = (
    {
        "id": "exact",
        "name": {"en": "Exact match", "zh": "完全匹配"},
        "explanation": {
            "en": "One REASONING block and one SOLUTION block (format 2.0), and the solution equals the gold "
                  "answer as a string (correctness 2.0): 0.3 × 2.0 + 1.0 × 2.0 = 2.6, the best a sample can get.",
            "zh": "一个 REASONING 块和一个 SOLUTION 块（格式分 2.0），且答案与标准答案的字符串完全相同"
                  "（正确性 2.0）：0.3 × 2.0 + 1.0 × 2.0 = 2.6，单个样本的最高分。",
        },
        "request": {"completion": _THINK + "<SOLUTION>991</SOLUTION>", "answer": "991", "answer_format": "tags"},
    },
    {
        "id": "numeric",
        "name": {"en": "Numeric match", "zh": "数值匹配"},
        "explanation": {
            "en": "\"991.0\" is the same number as \"991\" but not the same string: correctness pays 1.5, not "
                  "2.0, so the total is 2.1. The seed's strict accuracy counts it wrong; the numeric and "
                  "MathVista accuracies count it right.",
            "zh": "“991.0” 与 “991” 数值相同但字符串不同：正确性得 1.5 而不是 2.0，总分 2.1。"
                  "种子的严格准确率判为错误，数值准确率和 MathVista 准确率判为正确。",
        },
        "request": {"completion": _THINK + "<SOLUTION>991.0</SOLUTION>", "answer": "991", "answer_format": "tags",
                    "answer_type": "integer"},
    },
    {
        "id": "missing_tags",
        "name": {"en": "Missing tags", "zh": "缺少标签"},
        "explanation": {
            "en": "The right number, but not inside a SOLUTION block: correctness reads only that block, so it "
                  "scores 0. The REASONING block still earns format 1.0 (0.3 after weighting).",
            "zh": "数字是对的，但不在 SOLUTION 块里：正确性只读取这个块，因此得 0。"
                  "REASONING 块仍得格式分 1.0（加权后 0.3）。",
        },
        "request": {"completion": _THINK + "So the answer is 991.", "answer": "991", "answer_format": "tags"},
    },
    {
        "id": "spam",
        "name": {"en": "addCriterion spam", "zh": "addCriterion 刷屏"},
        "explanation": {
            "en": "Qwen-VL's degenerate loop: when \"addCriterion\" and newlines make up at least half of the "
                  "text, the format reward takes −2, so the total is 0.3 × (−2) = −0.6.",
            "zh": "Qwen-VL 的退化循环：当 “addCriterion” 和换行符至少占文本的一半时，格式分扣 2 分，"
                  "总分为 0.3 × (−2) = −0.6。",
        },
        "request": {"completion": "addCriterion\n" * 6 + "addCriterion", "answer": "991", "answer_format": "tags"},
    },
    {
        "id": "boxed",
        "name": {"en": "Boxed answer", "zh": "\\boxed 答案"},
        "explanation": {
            "en": "The geo3k / RLinf recipe: only the last \\boxed{} counts, +1 when it matches the gold answer "
                  "(as a string or as a number), else 0. There is no format reward.",
            "zh": "geo3k / RLinf 方案：只看最后一个 \\boxed{}，与标准答案一致（字符串或数值）得 +1，否则为 0。"
                  "没有格式奖励。",
        },
        "request": {"completion": "The rectangle is 6 by 2, so its area is 6 × 2 = \\boxed{12}.", "answer": "12",
                    "answer_format": "boxed"},
    },
    {
        "id": "option_letter",
        "name": {"en": "Choice letter", "zh": "选项字母"},
        "explanation": {
            "en": "MathVista's query asks for the option letter: \"C\" is the third choice, 145°, so "
                  "correctness pays the full 2.0, although \"C\" and \"145°\" differ as strings.",
            "zh": "MathVista 的提问要求回答选项字母：“C” 是第三个选项 145°，因此正确性得满分 2.0，"
                  "尽管 “C” 与 “145°” 字符串不同。",
        },
        "request": {
            "completion": "<REASONING>The marked angle is obtuse, a little over 140°.</REASONING>\n"
                          "<SOLUTION>C</SOLUTION>",
            "answer": "145°", "answer_format": "tags", "question_type": "multi_choice",
            "choices": ["135°", "140°", "145°", "150°"],
        },
    },
)


def preset(preset_id: str) -> dict:
    """The preset with this id; KeyError naming the known ids otherwise."""
    for item in PRESETS:
        if item["id"] == preset_id:
            return item
    raise KeyError(f"no preset {preset_id!r}; known: {', '.join(p['id'] for p in PRESETS)}")
