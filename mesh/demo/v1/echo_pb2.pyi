from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigureRequest(_message.Message):
    __slots__ = ("fail", "delay", "read_only", "fail_share")
    FAIL_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    FAIL_SHARE_FIELD_NUMBER: _ClassVar[int]
    fail: str
    delay: float
    read_only: bool
    fail_share: float
    def __init__(self, fail: _Optional[str] = ..., delay: _Optional[float] = ..., read_only: _Optional[bool] = ..., fail_share: _Optional[float] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: int
    def __init__(self, calls: _Optional[int] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("message", "backend")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    message: str
    backend: str
    def __init__(self, message: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class EchoStreamRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class EchoStreamResponse(_message.Message):
    __slots__ = ("message", "backend")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    message: str
    backend: str
    def __init__(self, message: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...
