"""Reading a libxc stream incrementally: :class:`StreamReader`, and the record order it
enforces for x86 PV (:class:`X86PvOrder`) and HVM (:class:`X86HvmOrder`).

The records themselves (types, encoders, body decoders and size limits) are
:mod:`.libxc`; this module is how a receiver takes a stream apart as it arrives: each record
header is checked before its body is buffered, each body is decoded and checked, and the
records must come in the order Xen's saver writes them. Whatever Xen's restorer
(``xg_sr_restore.c``) or its verifier refuses is refused here with ``XenError(EINVAL)``.
"""

from __future__ import annotations

from protocols.errno import XenError
from protocols.migration.libxc import (BODY_CAP, BODY_EXACT, DHDR, DHDR_TYPE_X86_PV, IHDR, REFUSED,
                                       DomainHeader, ImageHeader, Record, RecType,
                                       p2m_frames_length, parse_domain_header, parse_hvm_params,
                                       parse_image_header, parse_page_data, parse_vcpu_blob,
                                       parse_x86_cpuid_policy, parse_x86_msr_policy,
                                       parse_x86_pv_info, parse_x86_pv_p2m_frames,
                                       parse_x86_tsc_info)
from protocols.migration.record import REC_TYPE_OPTIONAL, Input, RecordFramer, StreamDecoder, err

# The order of a vCPU's records (X86PvOrder).
_VCPU_STAGE = {RecType.X86_PV_VCPU_BASIC: 1, RecType.X86_PV_VCPU_EXTENDED: 2,
               RecType.X86_PV_VCPU_XSAVE: 3, RecType.X86_PV_VCPU_MSRS: 4}


class _Order:
    """What the x86 PV and HVM record orders share: the policy records before
    STATIC_DATA_END, the memory rounds (PAGE_DATA, one VERIFY, X86_TSC_INFO ending them),
    and END or CHECKPOINT (another round of memory) at the close."""

    def __init__(self, state: str, checkpointed: bool) -> None:
        self.checkpointed = checkpointed
        self.state = state
        self._policy = 0      # 1 after CPUID policy, 2 after MSR policy
        self._verify = False
        self.done = False

    def check(self, rtype: int, value=None) -> None:
        if self.done:
            raise err(f"{RecType(rtype).name} after END")
        self._step(rtype, value)
        if rtype == RecType.END and not self.done:
            raise err("END before the stream was complete")

    def _step(self, rtype: int, value) -> None:
        raise NotImplementedError

    def _refuse(self, rtype: int, expected: str) -> XenError:
        return err(f"{RecType(rtype).name} out of order: expected {expected}")

    def _static(self, rtype: int, then: str) -> None:
        if rtype == RecType.X86_CPUID_POLICY and self._policy == 0:
            self._policy = 1
        elif rtype == RecType.X86_MSR_POLICY and self._policy < 2:
            self._policy = 2
        elif rtype == RecType.STATIC_DATA_END:
            self.state = then
        else:
            raise self._refuse(rtype, "X86_CPUID_POLICY, X86_MSR_POLICY or STATIC_DATA_END")

    def _memory(self, rtype: int, then: str) -> None:
        if rtype == RecType.PAGE_DATA:
            pass
        elif rtype == RecType.VERIFY and not self._verify:
            self._verify = True
        elif rtype == RecType.X86_TSC_INFO:
            self.state = then
        else:
            raise self._refuse(rtype, "PAGE_DATA, VERIFY or X86_TSC_INFO")

    def _close(self, rtype: int) -> None:
        """END, or CHECKPOINT and another round of memory (a checkpointed stream's)."""
        if rtype == RecType.CHECKPOINT and not self.checkpointed:
            raise err("CHECKPOINT in a stream that is not checkpointed")
        self.done = rtype == RecType.END
        self.state, self._verify = "memory", False


class X86PvOrder(_Order):
    """The record order of an x86 PV stream, as ``xg_sr_save.c`` + ``xg_sr_save_x86_pv.c``
    write it, refusing any other::

        X86_PV_INFO, [X86_CPUID_POLICY], [X86_MSR_POLICY], STATIC_DATA_END,
        X86_PV_P2M_FRAMES, PAGE_DATA*, [VERIFY, PAGE_DATA*], X86_TSC_INFO, SHARED_INFO,
        for each online vCPU in increasing id: BASIC, [EXTENDED], [XSAVE], [MSRS],
        END                       (or CHECKPOINT, then PAGE_DATA* ... again, if checkpointed)

    The saver leaves out a vCPU record with nothing in it, and an offline vCPU entirely;
    vCPU 0's BASIC is required (restore: "Sender didn't send vcpu0's basic state").
    Xen's restorer is laxer (it needs only PV_INFO and STATIC_DATA_END before P2M_FRAMES,
    and P2M_FRAMES before PAGE_DATA), but we read only streams our saver wrote.
    """

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__("info", checkpointed)
        self._vcpu = -1       # last vCPU whose BASIC was seen this round
        self._stage = 0
        self._vcpu0 = False

    def _step(self, rtype: int, value) -> None:
        s = self.state
        if s == "info":
            if rtype != RecType.X86_PV_INFO:
                raise self._refuse(rtype, "X86_PV_INFO")
            self.state = "static"
        elif s == "static":
            self._static(rtype, "p2m")
        elif s == "p2m":
            if rtype != RecType.X86_PV_P2M_FRAMES:
                raise self._refuse(rtype, "X86_PV_P2M_FRAMES")
            self.state = "memory"
        elif s == "memory":
            self._memory(rtype, "shinfo")
        elif s == "shinfo":
            if rtype != RecType.SHARED_INFO:
                raise self._refuse(rtype, "SHARED_INFO")
            self.state = "vcpus"
            self._vcpu, self._stage = -1, 0
        elif s == "vcpus":
            self._vcpus(rtype, value)

    def _vcpus(self, rtype: int, value) -> None:
        stage = _VCPU_STAGE.get(rtype)
        if stage == 1 and value.vcpu_id > self._vcpu:
            self._vcpu, self._stage = value.vcpu_id, 1
            self._vcpu0 = self._vcpu0 or value.vcpu_id == 0
        elif stage and stage > 1 and value.vcpu_id == self._vcpu and stage > self._stage:
            self._stage = stage
        elif rtype in (RecType.END, RecType.CHECKPOINT) and self._vcpu0:
            self._close(rtype)
        elif rtype in (RecType.END, RecType.CHECKPOINT):
            raise err(f"{RecType(rtype).name} before vCPU 0's X86_PV_VCPU_BASIC")
        elif stage:
            raise err(f"{RecType(rtype).name} for vCPU {value.vcpu_id} out of order "
                      f"(after vCPU {self._vcpu} stage {self._stage})")
        else:
            raise self._refuse(rtype, "vCPU records or END")


class X86HvmOrder(_Order):
    """The record order of an x86 HVM stream (``xg_sr_save_x86_hvm.c``)::

        [X86_CPUID_POLICY], [X86_MSR_POLICY], STATIC_DATA_END, PAGE_DATA*, [VERIFY ...],
        X86_TSC_INFO, HVM_CONTEXT and HVM_PARAMS (each once, either order), END

    The spec says HVM_PARAMS precedes HVM_CONTEXT, but Xen's saver writes HVM_CONTEXT
    first and the restorer applies both at the end, so both orders are accepted.
    """

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__("static", checkpointed)
        self._tail: set[int] = set()

    def _step(self, rtype: int, value) -> None:
        s = self.state
        if s == "static":
            self._static(rtype, "memory")
        elif s == "memory":
            self._memory(rtype, "context")
            if self.state == "context":
                self._tail = set()
        elif s == "context":
            if rtype in (RecType.HVM_CONTEXT, RecType.HVM_PARAMS) and rtype not in self._tail:
                self._tail.add(rtype)
            elif rtype in (RecType.END, RecType.CHECKPOINT) and RecType.HVM_CONTEXT in self._tail:
                self._close(rtype)
            else:
                raise self._refuse(rtype, "HVM_CONTEXT, HVM_PARAMS or END")


class StreamReader(StreamDecoder):
    """Incremental decoder of a libxc stream: ``feed(chunk)`` returns the records completed
    by it, decoded and checked (:class:`Record`); ``close()`` raises if the stream stopped
    before its END. After the first error every call raises it again.

    ``p2m_size``: the destination's number of pfns (PAGE_DATA and P2M_FRAMES must stay
    below it; without it, pfns must stay within the stream's own P2M_FRAMES range).
    ``max_vcpus``: vCPU ids must be below it. ``domain_type``: the DHDR type expected.
    Optional records of unknown type are skipped (counted in ``skipped``).
    """

    _what = "libxc stream"

    def __init__(self, *, p2m_size: int | None = None, max_vcpus: int | None = None,
                 domain_type: int | None = None, checkpointed: bool = False,
                 check_order: bool = True, _input: Input | None = None,
                 _nested: bool = False) -> None:
        super().__init__()
        self.p2m_size = p2m_size
        self.max_vcpus = max_vcpus
        self.domain_type = domain_type
        self.checkpointed = checkpointed
        self.check_order = check_order
        self._input = _input if _input is not None else Input()
        self._own_input = _input is None
        self._framer = RecordFramer(self._input, self._limit, "libxc")
        self.image_header: ImageHeader | None = None
        self.domain_header: DomainHeader | None = None
        self.order: X86PvOrder | X86HvmOrder | None = None
        self.p2m_end_pfn: int | None = None
        # Inside a libxl stream, a CHECKPOINT hands the stream back to libxl until
        # its CHECKPOINT_END (libxl_stream_read.c); the outer reader then calls resume().
        self._pause_at_checkpoint = _nested
        self.at_checkpoint = False

    def resume(self) -> None:
        self.at_checkpoint = False

    @property
    def skipped(self) -> int:
        return self._framer.skipped

    def poll(self) -> list[Record]:
        """Decode what is buffered (for a shared input fed by an outer reader)."""
        return self._guarded()

    def _truncated(self) -> str:
        where = ("image header" if self.image_header is None else
                 "domain header" if self.domain_header is None else
                 "record body" if self._framer.mid_record else "record")
        return f"libxc stream truncated in a {where} (no END record)"

    def _poll(self) -> list[Record]:
        out: list[Record] = []
        inp = self._input
        while not self.done and not self.at_checkpoint:
            if self.image_header is None:
                raw = inp.take(IHDR.size)
                if raw is None:
                    break
                self.image_header = parse_image_header(raw)
                continue
            if self.domain_header is None:
                raw = inp.take(DHDR.size)
                if raw is None:
                    break
                dh = parse_domain_header(raw)
                if self.domain_type is not None and dh.type != self.domain_type:
                    raise err(f"libxc domain header: domain type {dh.type}, expected "
                              f"{self.domain_type}")
                self.domain_header = dh
                if self.check_order:
                    cls = X86PvOrder if dh.type == DHDR_TYPE_X86_PV else X86HvmOrder
                    self.order = cls(self.checkpointed)
                continue
            got = self._framer.next()
            if got is None:
                break
            if got is RecordFramer.SKIPPED:
                continue
            rtype, body = got
            value = self._decode(rtype, body)
            if self.order is not None:
                self.order.check(rtype, value)
            if rtype == RecType.END:
                self.done = True
            elif rtype == RecType.CHECKPOINT and self._pause_at_checkpoint:
                self.at_checkpoint = True
            out.append(Record(RecType(rtype), body, value))
        if self.done and self._own_input and len(inp):
            raise err("libxc stream: data after END")
        return out

    def _limit(self, rtype: int, length: int) -> int | None:
        try:
            t = RecType(rtype)
        except ValueError:
            if rtype & REC_TYPE_OPTIONAL:
                return None
            raise err(f"libxc: unknown mandatory record type 0x{rtype:08x}") from None
        if t in REFUSED:
            raise err(f"libxc: {t.name} record not accepted in a forward stream")
        exact = BODY_EXACT.get(t)
        if exact is not None:
            if length != exact:
                raise err(f"{t.name} length {length}, expected {exact}")
            return exact
        if t == RecType.X86_PV_P2M_FRAMES:
            last = 0xFFFFFFFF if self.p2m_size is None else max(self.p2m_size - 1, 0)
            return p2m_frames_length(0, last)
        return BODY_CAP[t]

    def _decode(self, rtype: int, body: bytes):
        if rtype == RecType.PAGE_DATA:
            limits = [n for n in (self.p2m_size, self.p2m_end_pfn) if n is not None]
            if self.p2m_end_pfn is not None:
                limits[-1] += 1  # end_pfn is inclusive
            return parse_page_data(body, min(limits) if limits else None)
        if rtype == RecType.X86_PV_INFO:
            return parse_x86_pv_info(body)
        if rtype == RecType.X86_PV_P2M_FRAMES:
            frames = parse_x86_pv_p2m_frames(body, self.p2m_size)
            self.p2m_end_pfn = frames.end_pfn
            return frames
        if rtype == RecType.X86_TSC_INFO:
            return parse_x86_tsc_info(body)
        if rtype in (RecType.X86_PV_VCPU_BASIC, RecType.X86_PV_VCPU_EXTENDED,
                     RecType.X86_PV_VCPU_XSAVE, RecType.X86_PV_VCPU_MSRS):
            return parse_vcpu_blob(rtype, body, self.max_vcpus)
        if rtype == RecType.X86_CPUID_POLICY:
            return parse_x86_cpuid_policy(body)
        if rtype == RecType.X86_MSR_POLICY:
            return parse_x86_msr_policy(body)
        if rtype == RecType.HVM_PARAMS:
            return parse_hvm_params(body)
        if rtype == RecType.HVM_CONTEXT:
            if not body:
                raise err("HVM_CONTEXT is empty")
            return bytes(body)
        if rtype == RecType.SHARED_INFO:
            return bytes(body)
        return None


def read_stream(data, **kwargs) -> tuple[StreamReader, list[Record]]:
    """Decode a whole libxc stream held in memory (``kwargs`` as for :class:`StreamReader`);
    bytes after END are refused."""
    reader = StreamReader(**kwargs)
    records = reader.feed(data)
    reader.close()
    return reader, records
