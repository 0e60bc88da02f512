// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// xdp_trust_routing: drop traffic whose destination has a trust score below
// the threshold. The layouts of every map value here are mirrored, field for
// field, by src/layout.rs; a change on one side is a change on both.
//
// Consistency: every table the lookup uses exists twice (generation 0 and 1).
// A packet reads the version once and uses only the tables of generation
// (version & 1); user space fills the idle generation, bumps the version,
// waits out running programs (see drx_grace), then mirrors the batch into
// the other one. No packet sees half of a batch.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_PREFIXES 131072
#define MAX_NODES 65536
#define CACHE_ENTRIES 65536
#define MAX_VLAN 2
#define MAX_EXT_HDRS 6

#define FLAG_CACHE 1u

// Reasons, indexing drx_stats. Keep in step with layout.rs's Reason.
enum reason {
	R_TRUSTED = 0,   // known destination at or above the threshold: pass
	R_LOW_TRUST,     // known destination below the threshold: drop
	R_UNKNOWN,       // no prefix matched: unknown_verdict
	R_NOT_IP,        // neither IPv4 nor IPv6: pass
	R_MALFORMED,     // truncated or inconsistent headers: default_verdict
	R_UNPARSED,      // headers we cannot walk (an IPv6 extension header, a routing
	                 // header type, a third VLAN tag): default_verdict
	R_CACHE_HIT,     // auxiliary: lookups answered by drx_cache
	R_CACHE_MISS,    // auxiliary: lookups that went to the trie
	R_COUNT,
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct settings {
	__u32 threshold;       // fixed point, 0..=1_000_000
	__u32 unknown_verdict; // XDP_PASS or XDP_DROP
	__u32 default_verdict; // XDP_PASS or XDP_DROP
	__u32 flags;
	__u64 applied;         // version this generation was last brought up to (user space only)
};

struct key4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct key6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct route {
	__u32 node_id;
	__u32 slot; // index into drx_prefix_stats
};

struct cache_key {
	__u32 family;
	__u8 addr[16];
};

struct cache_val {
	__u64 version;
	__u32 node_id;
	__u32 score;
	__u32 slot;
	__u32 known; // 0: no prefix matched, or its node has no score
};

#define PINNED __uint(pinning, LIBBPF_PIN_BY_NAME)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	PINNED;
} drx_version SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct settings);
	PINNED;
} drx_settings SEC(".maps");

#define TRIE(name, keytype)                                  \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);         \
		__uint(max_entries, MAX_PREFIXES);           \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
		__type(key, keytype);                        \
		__type(value, struct route);                 \
		PINNED;                                      \
	} name SEC(".maps")

TRIE(drx_trie4_0, struct key4);
TRIE(drx_trie4_1, struct key4);
TRIE(drx_trie6_0, struct key6);
TRIE(drx_trie6_1, struct key6);

#define NODES(name)                                          \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__uint(max_entries, MAX_NODES);              \
		__type(key, __u32);                          \
		__type(value, __u32);                        \
		PINNED;                                      \
	} name SEC(".maps")

NODES(drx_nodes_0);
NODES(drx_nodes_1);

// Exact-match front for the tries (per destination address), tagged with the
// version it was filled under: a bumped version makes every entry stale.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, CACHE_ENTRIES);
	__type(key, struct cache_key);
	__type(value, struct cache_val);
	PINNED;
} drx_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
	PINNED;
} drx_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_PREFIXES);
	__type(key, __u32);
	__type(value, struct counter);
	PINNED;
} drx_prefix_stats SEC(".maps");

// Never read by the program. Replacing its one slot from user space makes
// the kernel wait for every running BPF program to finish
// (maybe_wait_bpf_programs in kernel/bpf/syscall.c): the grace period after
// a version bump.
struct grace_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	PINNED;
} drx_grace_token SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	PINNED;
	__array(values, struct grace_inner);
} drx_grace SEC(".maps");

static __always_inline void count(__u32 idx, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&drx_stats, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_prefix(__u32 slot, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&drx_prefix_stats, &slot);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ipv6_ext {
	__u8 nexthdr;
	__u8 len;
};

struct ipv6_rt {
	__u8 nexthdr;
	__u8 len;
	__u8 type;
	__u8 segments_left;
};

static __always_inline int is_vlan(__u16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

// Walks IPv6 extension headers. Returns 0 on reaching an upper-layer
// protocol, -1 on truncation, -2 on a header it does not know how to walk.
// A routing header with segments left names where the packet is finally
// going, not its destination address (the next hop): that address is copied
// into `final` (16 bytes), since the trust that matters is the final one.
static __always_inline int walk_ipv6_ext(void *cur, void *end, __u8 nexthdr, __u8 *final)
{
#pragma unroll
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		struct ipv6_ext *ext = cur;
		switch (nexthdr) {
		case IPPROTO_ROUTING: {
			struct ipv6_rt *rt = cur;
			if ((void *)(rt + 1) > end)
				return -1;
			if (rt->segments_left) {
				void *addr;
				if (rt->type == 2 || rt->type == 4) {
					// Mobile IPv6: the home address; Segment Routing
					// (RFC 8754): segment list[0] is the last segment.
					addr = cur + 8;
				} else if (rt->type == 0) {
					// RFC 2460's type 0 (deprecated): the last address listed.
					__u32 n = rt->len / 2;
					if (n == 0)
						return -1;
					addr = cur + 8 + ((n - 1) & 0x7f) * 16;
				} else {
					return -2;
				}
				if (addr + 16 > end)
					return -1;
				__builtin_memcpy(final, addr, 16);
			}
			nexthdr = rt->nexthdr;
			cur += ((__u32)rt->len + 1) * 8;
			break;
		}
		case IPPROTO_HOPOPTS:
		case IPPROTO_DSTOPTS:
			if ((void *)(ext + 1) > end)
				return -1;
			nexthdr = ext->nexthdr;
			cur += ((__u32)ext->len + 1) * 8;
			break;
		case IPPROTO_FRAGMENT:
			if ((void *)(ext + 1) > end)
				return -1;
			nexthdr = ext->nexthdr;
			cur += 8;
			break;
		case IPPROTO_AH:
			if ((void *)(ext + 1) > end)
				return -1;
			nexthdr = ext->nexthdr;
			cur += ((__u32)ext->len + 2) * 4;
			break;
		// Extension headers from the IANA registry we do not walk.
		case IPPROTO_MH:
		case 139: // HIP
		case 140: // Shim6
		case 253: // experimental
		case 254: // experimental
			return -2;
		default:
			return 0;
		}
	}
	return -2; // deeper than we walk
}

SEC("xdp")
int xdp_trust_routing(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 bytes = end - data;
	__u32 zero = 0;

	__u64 *vp = bpf_map_lookup_elem(&drx_version, &zero);
	if (!vp)
		return XDP_PASS;
	__u64 version = *(volatile __u64 *)vp;
	__u32 gen = version & 1;
	struct settings *s = bpf_map_lookup_elem(&drx_settings, &gen);
	if (!s)
		return XDP_PASS;
	// Only ever XDP_PASS or XDP_DROP, whatever a map holds.
	__u32 default_verdict = s->default_verdict == XDP_DROP ? XDP_DROP : XDP_PASS;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end) {
		count(R_MALFORMED, bytes);
		return default_verdict;
	}
	void *cur = eth + 1;
	__u16 proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < MAX_VLAN; i++) {
		if (!is_vlan(proto))
			break;
		struct vlan_hdr *vh = cur;
		if ((void *)(vh + 1) > end) {
			count(R_MALFORMED, bytes);
			return default_verdict;
		}
		proto = vh->proto;
		cur = vh + 1;
	}
	// More tags than the program unwraps: it cannot see the destination, so
	// the frame gets the default verdict (counted), not a silent pass as not-IP.
	if (is_vlan(proto)) {
		count(R_UNPARSED, bytes);
		return default_verdict;
	}

	struct cache_key ck = {};
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5 ||
		    cur + ip->ihl * 4 > end || bpf_ntohs(ip->tot_len) < ip->ihl * 4) {
			count(R_MALFORMED, bytes);
			return default_verdict;
		}
		ck.family = 4;
		__builtin_memcpy(ck.addr, &ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		if ((void *)(ip6 + 1) > end || ip6->version != 6) {
			count(R_MALFORMED, bytes);
			return default_verdict;
		}
		__builtin_memcpy(ck.addr, &ip6->daddr, 16);
		int walked = walk_ipv6_ext(ip6 + 1, end, ip6->nexthdr, ck.addr);
		if (walked == -1) {
			count(R_MALFORMED, bytes);
			return default_verdict;
		}
		if (walked == -2) {
			count(R_UNPARSED, bytes);
			return default_verdict;
		}
		ck.family = 6;
	} else {
		count(R_NOT_IP, bytes);
		return XDP_PASS;
	}

	struct cache_val hit = {};
	struct cache_val *cv = 0;
	if (s->flags & FLAG_CACHE)
		cv = bpf_map_lookup_elem(&drx_cache, &ck);
	if (cv && cv->version == version) {
		hit = *cv;
		count(R_CACHE_HIT, bytes);
	} else {
		struct route *r;
		if (ck.family == 4) {
			struct key4 k = { .prefixlen = 32 };
			__builtin_memcpy(k.addr, ck.addr, 4);
			r = gen ? bpf_map_lookup_elem(&drx_trie4_1, &k) : bpf_map_lookup_elem(&drx_trie4_0, &k);
		} else {
			struct key6 k = { .prefixlen = 128 };
			__builtin_memcpy(k.addr, ck.addr, 16);
			r = gen ? bpf_map_lookup_elem(&drx_trie6_1, &k) : bpf_map_lookup_elem(&drx_trie6_0, &k);
		}
		hit.version = version;
		if (r) {
			__u32 node = r->node_id;
			__u32 *score = gen ? bpf_map_lookup_elem(&drx_nodes_1, &node)
					   : bpf_map_lookup_elem(&drx_nodes_0, &node);
			if (score) {
				hit.known = 1;
				hit.node_id = node;
				hit.score = *score;
				hit.slot = r->slot;
			}
		}
		if (s->flags & FLAG_CACHE) {
			count(R_CACHE_MISS, bytes);
			bpf_map_update_elem(&drx_cache, &ck, &hit, BPF_ANY);
		}
	}

	if (!hit.known) {
		count(R_UNKNOWN, bytes);
		return s->unknown_verdict == XDP_DROP ? XDP_DROP : XDP_PASS;
	}
	count_prefix(hit.slot, bytes);
	if (hit.score < s->threshold) {
		count(R_LOW_TRUST, bytes);
		return XDP_DROP;
	}
	count(R_TRUSTED, bytes);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
