"""Kylon's Gemini helpers that take a file and a prompt and give the answer's
text (the JSON of each is documented in docs/gemini-helpers.md).

Each is a route of the Gemini provider whose rewrite turns Kylon's JSON into
a generateContent call and whose answer hook turns Gemini's answer into
Kylon's JSON: the call itself (relay, metering, billing, the usage record) is
the proxy's own. `files/upload-urls` has a handler of its own (upload_urls.py).
"""

import base64
import binascii
import re

# MIME types Gemini understands (ai.google.dev: image, document, audio and
# video understanding); parameters such as `; charset=` are ignored.
IMAGE_TYPES = frozenset("image/png image/jpeg image/webp image/heic image/heif".split())
DOCUMENT_TYPES = frozenset(
    "application/pdf application/json application/rtf application/x-javascript application/x-python "
    "application/x-typescript text/plain text/html text/css text/csv text/javascript text/markdown "
    "text/rtf text/x-python text/x-typescript text/xml".split()
)
VIDEO_TYPES = frozenset(
    "video/mp4 video/mpeg video/mov video/quicktime video/avi video/x-flv video/mpg video/webm "
    "video/wmv video/x-ms-wmv video/3gpp".split()
)
AUDIO_TYPES = frozenset(
    "audio/wav audio/x-wav audio/mp3 audio/mpeg audio/aiff audio/x-aiff audio/aac audio/ogg audio/flac".split()
)
ALL_TYPES = IMAGE_TYPES | DOCUMENT_TYPES | VIDEO_TYPES | AUDIO_TYPES

MAX_UPLOAD_URLS = 20
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# 90, "90s", "1.5s", "1:30", "01:02:03"
_SECONDS = re.compile(r"(\d+(?:\.\d+)?)s?\Z")
_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)\Z")
# What a header value may hold (no control characters: no header injection).
_HEADER_TEXT = re.compile(r"[\x20-\x7e]{1,255}")


def plain_mime_type(value):
    return value.split(";", 1)[0].strip().lower() if isinstance(value, str) else ""


def describe_files_problem(files):
    if not isinstance(files, list) or not files:
        return "'files' is required: a list of {display_name, mime_type, size_bytes}."
    if len(files) > MAX_UPLOAD_URLS:
        return f"At most {MAX_UPLOAD_URLS} files per call."
    for i, item in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            return f"{where} must be an object {{display_name, mime_type, size_bytes}}."
        name = item.get("display_name")
        if name is not None and (not isinstance(name, str) or len(name) > 512):
            return f"{where}.display_name must be a string of at most 512 characters."
        # Gemini decides which types it accepts; Kylon only checks that the
        # value can travel in the upload's header.
        mime = item.get("mime_type")
        mime = mime.strip() if isinstance(mime, str) else ""
        if not mime:
            return f"{where}.mime_type is required (a string)."
        if not _HEADER_TEXT.fullmatch(mime):
            return f"{where}.mime_type must be printable ASCII of at most 255 characters."
        item["mime_type"] = mime
        size = item.get("size_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return f"{where}.size_bytes must be a positive integer."
    return None



def check_upload_urls_request(exchange, request):
    """The rewrite of `files/upload-urls`: checks the request, changes nothing."""
    problem = describe_files_problem(request.get("files"))
    if problem:
        raise ValueError(problem)
    return False


class Understanding:
    """The rewrite of the file-understanding route: Kylon's JSON in, a
    generateContent call out (ValueError says what is wrong with the request)."""

    name = "file-understanding"
    kind = "file"
    mime_types = ALL_TYPES

    def __init__(self, provider):
        self.provider = provider

    def __call__(self, exchange, request):
        model, generate = self.build(request)
        exchange.path = f"/v1beta/models/{model}:generateContent"
        exchange.query = ""
        request.clear()
        request.update(generate)
        return True

    def build(self, request):
        """(model, generateContent body) for a helper request; ValueError says what is wrong."""
        model = request.get("model", self.provider.helper_model)
        if not isinstance(model, str) or not _MODEL_NAME.match(model.removeprefix("models/")):
            raise ValueError("'model' must be a Gemini model name such as 'gemini-2.5-flash'.")
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("'prompt' is required: what to ask about the file.")
        media, mime = self.media_part(request)
        prompt = self.add_options(request, media, mime, prompt)
        generate = {"contents": [{"role": "user", "parts": [media, {"text": prompt}]}]}
        system = request.get("system_instruction")
        if system is not None:
            if not isinstance(system, str):
                raise ValueError("'system_instruction' must be a string.")
            generate["systemInstruction"] = {"parts": [{"text": system}]}
        config = {}
        max_tokens = request.get("max_output_tokens")
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
                raise ValueError("'max_output_tokens' must be a positive integer.")
            config["maxOutputTokens"] = max_tokens
        temperature = request.get("temperature")
        if temperature is not None:
            if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
                raise ValueError("'temperature' must be a number from 0 to 2.")
            config["temperature"] = temperature
        config.update(self.generation_options(request))
        if config:
            generate["generationConfig"] = config
        return model.removeprefix("models/"), generate

    def media_part(self, request):
        file_uri = request.get("file_uri")
        inline = request.get("inline_data")
        if (file_uri is None) == (inline is None):
            raise ValueError(
                f"Give the {self.kind} as 'file_uri' (with 'mime_type') or as 'inline_data' "
                "{mime_type, data (base64)}, not both."
            )
        if file_uri is not None:
            if not isinstance(file_uri, str) or not file_uri.startswith(("https://", "http://", "gs://")):
                raise ValueError("'file_uri' must be the URI of an uploaded file (its 'uri' field).")
            mime = self.check_mime(request.get("mime_type"), "'mime_type'")
            return {"fileData": {"fileUri": file_uri, "mimeType": mime}}, mime
        if not isinstance(inline, dict):
            raise ValueError("'inline_data' must be an object {mime_type, data}.")
        mime = self.check_mime(inline.get("mime_type"), "'inline_data.mime_type'")
        data = inline.get("data")
        if not isinstance(data, str) or not data:
            raise ValueError("'inline_data.data' is required: the file's bytes in base64.")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("'inline_data.data' is not valid base64.") from None
        return {"inlineData": {"mimeType": mime, "data": data}}, mime

    def check_mime(self, value, name):
        mime = plain_mime_type(value)
        if not mime:
            raise ValueError(f"{name} is required (for example 'application/pdf').")
        if mime not in self.mime_types:
            raise ValueError(
                f"Unsupported MIME type '{value}' for {self.name}; supported: {', '.join(sorted(self.mime_types))}."
            )
        return mime

    def add_options(self, request, media, mime, prompt):
        return prompt

    def generation_options(self, request):
        return {}


def helper_answer(exchange, answer, usage, credits):
    """Kylon's JSON for an understanding helper's answer."""
    text, finish_reason = answer_text(answer)
    return {
        "text": text,
        "model": exchange.model,
        "finish_reason": finish_reason,
        "usage": {
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "estimated": usage.estimated,
            "credits": str(credits),
        },
    }


def answer_text(answer):
    """(text of the first candidate without its thoughts, finish or block reason)."""
    candidates = answer.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        feedback = answer.get("promptFeedback")
        return "", feedback.get("blockReason") if isinstance(feedback, dict) else None
    first = candidates[0]
    content = first.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts = []
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return "".join(texts), first.get("finishReason")


def seconds(value, name):
    """A clip offset given as seconds (90, "90s") or a clock ("1:30", "01:02:03")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        found = _SECONDS.match(text)
        if found:
            return float(found.group(1))
        found = _CLOCK.match(text)
        if found:
            hours, minutes, secs = found.groups()
            return int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    raise ValueError(f"'{name}' must be seconds (90, \"90s\") or a time (\"1:30\", \"01:02:03\").")


def duration(value):
    """Seconds as a protobuf Duration string ("90s", "1.5s")."""
    return f"{value:g}s"


def clock(value):
    whole = int(value)
    return f"{whole // 60:02d}:{whole % 60:02d}"


class VideoAudioUnderstanding(Understanding):
    """Video and audio, with a clip (start/end offsets), frame rate and media resolution."""

    name = "video-audio-understanding"
    kind = "video or audio"
    mime_types = VIDEO_TYPES | AUDIO_TYPES
    resolutions = {"low": "MEDIA_RESOLUTION_LOW", "medium": "MEDIA_RESOLUTION_MEDIUM", "high": "MEDIA_RESOLUTION_HIGH"}

    def add_options(self, request, media, mime, prompt):
        start = request.get("start_offset")
        end = request.get("end_offset")
        fps = request.get("fps")
        start_s = None if start is None else seconds(start, "start_offset")
        end_s = None if end is None else seconds(end, "end_offset")
        if start_s is not None and end_s is not None and end_s <= start_s:
            raise ValueError("'end_offset' must come after 'start_offset'.")
        if fps is not None and (
            not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 < fps <= 24
        ):
            raise ValueError("'fps' must be a number above 0 and at most 24.")
        if mime in VIDEO_TYPES:
            metadata = {}
            if start_s is not None:
                metadata["startOffset"] = duration(start_s)
            if end_s is not None:
                metadata["endOffset"] = duration(end_s)
            if fps is not None:
                metadata["fps"] = fps
            if metadata:
                media["videoMetadata"] = metadata
            return prompt
        if fps is not None:
            raise ValueError("'fps' applies to video only.")
        # Gemini clips audio by timestamps named in the prompt (MM:SS).
        if start_s is not None or end_s is not None:
            span = f"from {clock(start_s or 0)}" + (f" to {clock(end_s)}" if end_s is not None else " to the end")
            prompt = f"Consider only the part of the audio {span}.\n\n{prompt}"
        return prompt

    def generation_options(self, request):
        resolution = request.get("media_resolution")
        if resolution is None:
            return {}
        if resolution not in self.resolutions:
            raise ValueError("'media_resolution' must be 'low', 'medium' or 'high'.")
        return {"mediaResolution": self.resolutions[resolution]}


