"""Chat templates of real model families, for tests of trainerd's chat-template masking.

Each template below is the family's published chat template (the `chat_template` of its
tokenizer_config.json / chat_template.jinja on the Hugging Face hub), copied verbatim from a
public repository that vendors it (the source is named above each one) unless its comment says
SYNTHETIC or "Reconstructed". Nothing is downloaded: the templates are applied to the tiny
local BPE tokenizer (trainerd.worker.tiny), with each family's marker tokens added to it.

    TEMPLATES[name]                  -> Jinja source (FAMILIES: the names, in order)
    SPECIAL_TOKENS[name]             -> the marker tokens the template emits (all become single tokens)
    PLAIN_TOKENS[name]               -> those of them the hub tokenizer adds with special=False
    EOS[name] / BOS[name]            -> end-of-turn token / bos_token (BOS: None when unused)
    make_tokenizer(name, base_dir)   -> a transformers tokenizer carrying that template
    save_model_with_template(name, src_model_dir, dst_dir) -> a model dir for base_model
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Qwen2.5-*-Instruct (Qwen/Qwen2.5-7B-Instruct tokenizer_config.json), verbatim.
# Source: huggingface/trl trl/chat_templates/qwen2_5.jinja @ f2cd577; byte-identical to
# ggml-org/llama.cpp models/templates/Qwen-Qwen2.5-7B-Instruct.jinja and to
# microsoft/onnxruntime-extensions test/data/qwen2.5/tokenizer_config.json.
# Injects 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' when the
# first message is not a system message; tools go into the system turn.
QWEN2_5 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


# Qwen3 (hybrid thinking, Qwen/Qwen3-0.6B ... 32B), verbatim: the revision with the
# `content is string` guards (later than the April-2025 copy in "qwen3_original").
# Source: huggingface/trl trl/chat_templates/qwen3.jinja @ f2cd577 ("Original Qwen3 chat
# template"); byte-identical to microsoft/onnxruntime-extensions test/data/qwen3/tokenizer_config.json.
# Assistant turns up to the last real user query lose their <think> block; the turns after
# it keep it, and the LAST assistant turn always gets one (empty if there is no reasoning).
QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""


# Qwen3 as first released (April 2025): same logic as "qwen3" but without the
# `content is string` guards (message.content must be a string).
# Source: ggml-org/llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja (mirror ye-NX/llama.cpp
# @ 1eeb523), fetched from the hub by llama.cpp's scripts/get_chat_template.py.
QWEN3_ORIGINAL = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""


# DeepSeek-R1-Distill-* (newer revision, generation prompt '<｜Assistant｜><think>\n'), verbatim.
# Source: ggml-org/llama.cpp models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja
# (mirror ye-NX/llama.cpp @ 1eeb523); byte-identical to ...-DeepSeek-R1-Distill-Llama-8B.jinja.
# EVERY assistant turn (the last one too) is cut to the text after its last '</think>'.
DEEPSEEK_R1 = r"""{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"""


# DeepSeek-R1-Distill-* first revision (generation prompt '<｜Assistant｜>' with no <think>).
# Reconstructed from "deepseek_r1" by replacing only the final generation-prompt literal, as in
# the older (reformatted) copy in llama.cpp history (commit 8b576b6, same file).
DEEPSEEK_R1_ORIGINAL = r"""{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"""


# Llama 3.1 Instruct (meta-llama/Llama-3.1-8B-Instruct), with tools, verbatim.
# Source: huggingface/trl trl/chat_templates/llama3_1.jinja @ f2cd577; byte-identical to
# ggml-org/llama.cpp models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja.
# Always renders a system header with 'Cutting Knowledge Date: December 2023' and
# 'Today Date: 26 Jul 2024' (date_string), even when there is no system message.
LLAMA3 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""


# Llama 3 (3.0) Instruct (meta-llama/Meta-Llama-3-8B-Instruct), no tools, verbatim.
# Source: huggingface/trl trl/chat_templates/llama3.jinja @ f2cd577.
LLAMA3_0 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}"""


# Gemma 2 (google/gemma-2-2b-it; Gemma 1 ships the same), verbatim. Raises
# 'System role not supported' on a system message, and on non-alternating roles.
# Source: ggml-org/llama.cpp models/templates/google-gemma-2-2b-it.jinja (mirror ye-NX/llama.cpp
# @ 1eeb523); byte-identical to huggingface/trl trl/chat_templates/gemma.jinja and
# microsoft/onnxruntime-extensions test/data/gemma/tokenizer_config.json.
GEMMA2 = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"""


# Gemma 3 (google/gemma-3-*-it), verbatim: folds a system message into the first user turn
# ('<system>\n\n<user>'), raises on non-alternating roles.
# Source: huggingface/trl trl/chat_templates/gemma3.jinja @ f2cd577; byte-identical to
# microsoft/onnxruntime-extensions test/data/models/gemma-3/tokenizer_config.json.
GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""


# Mistral-7B-Instruct-v0.1/v0.2 (the original, pre-'v1' template without system support), verbatim.
# Raises 'Conversation roles must alternate user/assistant/user/assistant/...' (also for a
# leading system message) and 'Only user and assistant roles are supported!'. No generation prompt.
# Source: ggml-org/llama.cpp tests/test-chat-template.cpp, case "mistralai/Mistral-7B-Instruct-v0.2
# (NOTE: Old pre-v1 without a system prompt)" (mirror ye-NX/llama.cpp @ 1eeb523).
MISTRAL = r"""{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"""


# ChatML (Qwen2.5) with {% generation %}...{% endgeneration %} for return_assistant_tokens_mask.
# Source: huggingface/trl trl/chat_templates/qwen2_5_training.jinja @ f2cd577 (TRL swaps it in for
# SFT assistant_only_loss). Note the marked span is '\n' + content + '<|im_end|>\n': the newline
# after 'assistant' and the one after <|im_end|> are inside the mask. Renders exactly like qwen2_5.
GENERATION_MARKERS = r"""{#- Training variant of the Qwen2.5 chat template (see qwen2_5.jinja for the original).
    Modifications vs the original:
    - Added {% generation %} / {% endgeneration %} around assistant message output to support
      assistant-only loss masking in SFT training.
-#}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>assistant' }}
        {%- generation %}
        {%- if not message.tool_calls %}
            {{- '\n' + message.content + '<|im_end|>\n' }}
        {%- else %}
            {%- if message.content %}
                {{- '\n' + message.content }}
            {%- endif %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '\n<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {{- tool_call.arguments | tojson }}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
        {%- endgeneration %}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


# Qwen3 training variant with generation markers: every assistant turn keeps a <think> block
# (empty when there is no reasoning), marked span '<think>...</think>\n\n' + content + '<|im_end|>\n'.
# Source: huggingface/trl trl/chat_templates/qwen3_training.jinja @ f2cd577.
QWEN3_GENERATION = r"""{#- Training variant of the Qwen3 chat template (see qwen3.jinja for the original).
    Modifications vs the original:
    - Removed the loop.index0 > ns.last_query_index conditional; always include thinking block.
      This makes the template prefix-preserving for the [user, assistant] → [user, assistant, tool] transition.
    - Added {% generation %} / {% endgeneration %} around assistant message output to support
      assistant-only loss masking in SFT training.
-#}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- generation %}
        {{- '<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
        {%- endgeneration %}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""


# SYNTHETIC. ChatML whose generation prompt '<|im_start|>assistant\n<think>\n\n</think>\n\n'
# differs from the header it renders before an assistant message ('<|im_start|>assistant\n').
# This is what the published qwen3 template does to assistant turns before the last user query
# when called with enable_thinking=False; here it needs no extra kwargs.
GEN_PROMPT_DIFFERS = r"""{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' -}}{%- endif -%}"""


# Plain ChatML without tool support (never reads `tools`): teknium/OpenHermes-2.5-Mistral-7B.
# Source: ggml-org/llama.cpp tests/test-chat-template.cpp, case "teknium/OpenHermes-2.5-Mistral-7B"
# (mirror ye-NX/llama.cpp @ 1eeb523); '\n' there is the two-character Jinja escape, the hub JSON
# has real newlines inside the string literals: renders identically.
NO_TOOLS = r"""{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

TEMPLATES: dict[str, str] = {
    "qwen2_5": QWEN2_5,
    "qwen3": QWEN3,
    "qwen3_original": QWEN3_ORIGINAL,
    "deepseek_r1": DEEPSEEK_R1,
    "deepseek_r1_original": DEEPSEEK_R1_ORIGINAL,
    "llama3": LLAMA3,
    "llama3_0": LLAMA3_0,
    "gemma2": GEMMA2,
    "gemma": GEMMA2,  # the brief's "gemma": Gemma 2's, which raises on a system message
    "gemma3": GEMMA3,
    "mistral": MISTRAL,
    "generation_markers": GENERATION_MARKERS,
    "qwen3_generation": QWEN3_GENERATION,
    "gen_prompt_differs": GEN_PROMPT_DIFFERS,
    "no_tools": NO_TOOLS,
}

_CHATML = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
_QWEN_TOOLS = ["<tool_call>", "</tool_call>"]
_QWEN3_EXTRA = ["<think>", "</think>", "<tool_response>", "</tool_response>"]
_LLAMA3 = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|eom_id|>", "<|python_tag|>"]
_GEMMA = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
_DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
             "<think>", "</think>",
             "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
             "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
             "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
_MISTRAL = ["<s>", "</s>", "[INST]", "[/INST]"]

SPECIAL_TOKENS: dict[str, list[str]] = {
    "qwen2_5": _CHATML + _QWEN_TOOLS,
    "qwen3": _CHATML + _QWEN_TOOLS + _QWEN3_EXTRA,
    "qwen3_original": _CHATML + _QWEN_TOOLS + _QWEN3_EXTRA,
    "deepseek_r1": _DEEPSEEK,
    "deepseek_r1_original": _DEEPSEEK,
    "llama3": _LLAMA3,
    "llama3_0": _LLAMA3,
    "gemma2": _GEMMA,
    "gemma": _GEMMA,
    "gemma3": _GEMMA + ["<start_of_image>"],
    # On the hub, Mistral v0.1/v0.2 have no [INST] token (sentencepiece splits it into pieces;
    # v0.3 made it a control token). Here it is one special token, like v0.3.
    "mistral": _MISTRAL,
    "generation_markers": _CHATML + _QWEN_TOOLS,
    "qwen3_generation": _CHATML + _QWEN_TOOLS + _QWEN3_EXTRA,
    "gen_prompt_differs": _CHATML + ["<think>", "</think>"],
    "no_tools": _CHATML,
}

# Marker tokens that the hub tokenizer has as added tokens with "special": false (one id each,
# but kept by decode(skip_special_tokens=True)): Qwen's <think>/<tool_call> family, and
# DeepSeek-R1-Distill's <｜User｜>/<｜Assistant｜>/<think>/</think>. make_tokenizer adds them so.
PLAIN_TOKENS: dict[str, set[str]] = {
    "qwen2_5": set(_QWEN_TOOLS),
    "qwen3": set(_QWEN_TOOLS + _QWEN3_EXTRA),
    "qwen3_original": set(_QWEN_TOOLS + _QWEN3_EXTRA),
    "deepseek_r1": {"<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"},
    "deepseek_r1_original": {"<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"},
    "generation_markers": set(_QWEN_TOOLS),
    "qwen3_generation": set(_QWEN_TOOLS + _QWEN3_EXTRA),
    "gen_prompt_differs": {"<think>", "</think>"},
}

# The token that ends an assistant turn (what training must teach the model to emit and what
# generation stops on). For Gemma the hub's tokenizer eos_token is <eos>, but turns end with
# <end_of_turn> (generation_config lists both); here eos_token is set to <end_of_turn>.
EOS: dict[str, str] = {
    "qwen2_5": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "qwen3_original": "<|im_end|>",
    "deepseek_r1": "<｜end▁of▁sentence｜>",
    "deepseek_r1_original": "<｜end▁of▁sentence｜>",
    "llama3": "<|eot_id|>",
    "llama3_0": "<|eot_id|>",
    "gemma2": "<end_of_turn>",
    "gemma": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "mistral": "</s>",
    "generation_markers": "<|im_end|>",
    "qwen3_generation": "<|im_end|>",
    "gen_prompt_differs": "<|im_end|>",
    "no_tools": "<|im_end|>",
}

# bos_token for the templates that render {{ bos_token }} (None: the template does not use it).
BOS: dict[str, str | None] = {name: None for name in TEMPLATES} | {
    "deepseek_r1": "<｜begin▁of▁sentence｜>",
    "deepseek_r1_original": "<｜begin▁of▁sentence｜>",
    "llama3": "<|begin_of_text|>",
    "llama3_0": "<|begin_of_text|>",
    "gemma2": "<bos>",
    "gemma": "<bos>",
    "gemma3": "<bos>",
    "mistral": "<s>",
}

FAMILIES: tuple[str, ...] = tuple(TEMPLATES)


def make_tokenizer(family: str, base_tokenizer_dir: Path | str) -> PreTrainedTokenizerBase:
    """Load the tokenizer in `base_tokenizer_dir` and dress it as `family`: add the family's
    marker tokens (special ones as additional special tokens, PLAIN_TOKENS as ordinary added
    tokens, as on the hub), set chat_template, eos_token and, where the template uses it,
    bos_token. The pad token of the base tokenizer is kept."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    if family not in TEMPLATES:
        raise KeyError(f"unknown template family {family!r}; known: {', '.join(TEMPLATES)}")
    tok = AutoTokenizer.from_pretrained(str(base_tokenizer_dir))
    plain = PLAIN_TOKENS.get(family, set())
    vocab = tok.get_vocab()
    new_plain = [AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False)
                 for t in SPECIAL_TOKENS[family] if t in plain and t not in vocab]
    if new_plain:
        tok.add_tokens(new_plain)
    # transformers 5 calls the list extra_special_tokens, 4 additional_special_tokens; keep the
    # ones already there (add_special_tokens replaces the list).
    have = getattr(tok, "extra_special_tokens", None)
    if not isinstance(have, list):
        have = getattr(tok, "additional_special_tokens", None) or []
    have = [str(t) for t in have]
    extra = have + [t for t in SPECIAL_TOKENS[family] if t not in plain and t not in have]
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.add_special_tokens({"eos_token": EOS[family]})
    if BOS[family] is not None:
        tok.add_special_tokens({"bos_token": BOS[family]})
    tok.chat_template = TEMPLATES[family]
    return tok


def save_model_with_template(family: str, src_model_dir: Path | str, dst_dir: Path | str) -> Path:
    """Copy a saved model dir (config + weights + tokenizer) to `dst_dir`, then rewrite its
    tokenizer as `family` (make_tokenizer) and re-save its model with eos/bos/pad ids to match
    (and embeddings resized, seeded, when tokens were added), so `base_model = dst_dir` trains
    with that template."""
    import torch
    from transformers import AutoModelForCausalLM

    src, dst = Path(src_model_dir), Path(dst_dir)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    tok = make_tokenizer(family, src)
    model = AutoModelForCausalLM.from_pretrained(src)
    if model.get_input_embeddings().weight.shape[0] < len(tok):
        with torch.random.fork_rng(devices=[]):  # same new rows every time, global RNG untouched
            torch.manual_seed(0)
            model.resize_token_embeddings(len(tok), mean_resizing=False)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = tok.eos_token_id
        cfg.bos_token_id = tok.bos_token_id
        cfg.pad_token_id = tok.pad_token_id
    model.save_pretrained(dst)
    # The base tokenizer's files (tokenizer.json, tokenizer_config.json, any old
    # chat_template.jinja) are overwritten so no stale template is left behind.
    for name in ("chat_template.jinja", "chat_template.json"):
        (dst / name).unlink(missing_ok=True)
    tok.save_pretrained(dst)
    return dst


# Conversations the template and mask tests share.
SYS = {"role": "system", "content": "Be brief."}
PLAIN = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye!"},
]
REASONING = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\ngreet back\n</think>\n\nHello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "<think>\nsay bye\n</think>\n\nGoodbye!"},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_time", "description": "The time now.",
    "parameters": {"type": "object", "properties": {}}}}]
