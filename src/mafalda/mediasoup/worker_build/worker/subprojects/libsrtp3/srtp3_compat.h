/*
 * libsrtp 3 API shapes on top of libsrtp 2.5 (Debian's libsrtp2-dev).
 *
 * mediasoup 3.19 is written against libsrtp 3.0.0-beta, which no reachable
 * archive carries. This header is force-included (`-include`) into every
 * translation unit that uses the libsrtp3 stub dependency, so the worker
 * sources compile unchanged. Only what the worker calls is provided:
 *
 *   - srtp_protect / srtp_protect_rtcp / srtp_unprotect / srtp_unprotect_rtcp
 *     with separate in/out buffers and size_t lengths (2.5 works in place on
 *     an int length);
 *   - srtp_stream_remove (2.5 calls it srtp_remove_stream);
 *   - the two status codes libsrtp 3 added.
 *
 * The wrappers are C++ overloads of the C functions (different parameter
 * lists), so the 2.5 functions stay callable under their own names.
 */
#ifndef MAFALDA_SRTP3_COMPAT_H
#define MAFALDA_SRTP3_COMPAT_H

#ifdef __cplusplus

#include <srtp.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>

/* libsrtp 2.5's last status is srtp_err_status_pkt_idx_adv (27); libsrtp 3
 * appends these two right after it. */
inline constexpr srtp_err_status_t srtp_err_status_buffer_small =
  static_cast<srtp_err_status_t>(28);
inline constexpr srtp_err_status_t srtp_err_status_cryptex_err =
  static_cast<srtp_err_status_t>(29);

namespace mafalda_srtp3_compat
{
	using InPlaceFn = srtp_err_status_t (*)(srtp_t, void*, int*);

	/* Encrypt: libsrtp 3 receives the out buffer's capacity in *out_len and
	 * refuses when the result may not fit; 2.5 appends up to
	 * SRTP_MAX_TRAILER_LEN bytes in place, so demand that much room, copy the
	 * packet into the out buffer, and protect it there. */
	inline srtp_err_status_t Protect(
	  InPlaceFn fn, srtp_t ctx, const uint8_t* in, size_t in_len, uint8_t* out, size_t* out_len)
	{
		if (in_len > static_cast<size_t>(INT_MAX - SRTP_MAX_TRAILER_LEN))
		{
			return srtp_err_status_bad_param;
		}
		if (*out_len < in_len + SRTP_MAX_TRAILER_LEN)
		{
			return srtp_err_status_buffer_small;
		}
		if (out != in)
		{
			std::memmove(out, in, in_len);
		}

		int len                      = static_cast<int>(in_len);
		const srtp_err_status_t err = fn(ctx, out, &len);

		if (err == srtp_err_status_ok)
		{
			*out_len = static_cast<size_t>(len);
		}

		return err;
	}

	/* Decrypt: the result is never longer than the input (the worker decrypts
	 * in place, with *out_len == in_len). */
	inline srtp_err_status_t Unprotect(
	  InPlaceFn fn, srtp_t ctx, const uint8_t* in, size_t in_len, uint8_t* out, size_t* out_len)
	{
		if (in_len > static_cast<size_t>(INT_MAX))
		{
			return srtp_err_status_bad_param;
		}
		if (*out_len < in_len)
		{
			return srtp_err_status_buffer_small;
		}
		if (out != in)
		{
			std::memmove(out, in, in_len);
		}

		int len                      = static_cast<int>(in_len);
		const srtp_err_status_t err = fn(ctx, out, &len);

		if (err == srtp_err_status_ok)
		{
			*out_len = static_cast<size_t>(len);
		}

		return err;
	}
} // namespace mafalda_srtp3_compat

/* mki_index is ignored: mediasoup never configures MKIs and always passes 0. */
inline srtp_err_status_t srtp_protect(
  srtp_t ctx, const uint8_t* rtp, size_t rtp_len, uint8_t* srtp, size_t* srtp_len, size_t /*mki_index*/)
{
	return mafalda_srtp3_compat::Protect(::srtp_protect, ctx, rtp, rtp_len, srtp, srtp_len);
}

inline srtp_err_status_t srtp_protect_rtcp(
  srtp_t ctx, const uint8_t* rtcp, size_t rtcp_len, uint8_t* srtcp, size_t* srtcp_len, size_t /*mki_index*/)
{
	return mafalda_srtp3_compat::Protect(::srtp_protect_rtcp, ctx, rtcp, rtcp_len, srtcp, srtcp_len);
}

inline srtp_err_status_t srtp_unprotect(
  srtp_t ctx, const uint8_t* srtp, size_t srtp_len, uint8_t* rtp, size_t* rtp_len)
{
	return mafalda_srtp3_compat::Unprotect(::srtp_unprotect, ctx, srtp, srtp_len, rtp, rtp_len);
}

inline srtp_err_status_t srtp_unprotect_rtcp(
  srtp_t ctx, const uint8_t* srtcp, size_t srtcp_len, uint8_t* rtcp, size_t* rtcp_len)
{
	return mafalda_srtp3_compat::Unprotect(::srtp_unprotect_rtcp, ctx, srtcp, srtcp_len, rtcp, rtcp_len);
}

/* ssrc in network byte order, as in both versions. */
inline srtp_err_status_t srtp_stream_remove(srtp_t session, uint32_t ssrc)
{
	return srtp_remove_stream(session, ssrc);
}

#endif /* __cplusplus */

#endif /* MAFALDA_SRTP3_COMPAT_H */
