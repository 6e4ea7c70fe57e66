// Node.js mediasoup twin of bench/run.py: the same scenarios, the same worker binary
// (MEDIASOUP_WORKER_BIN). Standalone (--runs N [--only a,b]) it prints one JSON object;
// bench/run.py drives it with --serve (see serve()).
import fs from 'node:fs';
import readline from 'node:readline';
import { performance } from 'node:perf_hooks';
import * as mediasoup from 'mediasoup';

const MEDIA_CODECS = [
	{ kind: 'audio', mimeType: 'audio/opus', clockRate: 48000, channels: 2 },
	{ kind: 'video', mimeType: 'video/VP8', clockRate: 90000 },
];
const LISTEN = { protocol: 'udp', ip: '127.0.0.1' };
const AUDIO_RTP_PARAMETERS = {
	codecs: [{ mimeType: 'audio/opus', payloadType: 101, clockRate: 48000, channels: 2 }],
	encodings: [{ ssrc: 11111111 }],
};

const RTT_COUNT = 5000;
const PLAIN_COUNT = 2000;
const CONCURRENT = 200;
const CONSUME_TRANSPORTS = 4;

function rssMb(pid = 'self') {
	const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
	const line = status.split('\n').find((l) => l.startsWith('VmRSS:'));
	return Number(line.split(/\s+/)[1]) / 1024;
}

function median(values) {
	const s = [...values].sort((a, b) => a - b);
	const m = Math.floor(s.length / 2);
	return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const round1 = (x) => Math.round(x * 10) / 10;

async function requestRtt(router, state) {
	if (!state.transport) {
		state.transport = await router.createWebRtcTransport({ listenInfos: [LISTEN] });
	}
	const start = performance.now();
	for (let i = 0; i < RTT_COUNT; i++) {
		await state.transport.dump();
	}
	return [RTT_COUNT, (performance.now() - start) / 1000];
}

async function plainCreateClose(router) {
	const start = performance.now();
	for (let i = 0; i < PLAIN_COUNT; i++) {
		const transport = await router.createPlainTransport({ listenInfo: LISTEN });
		transport.close();
	}
	await router.dump(); // every close request has been processed
	return [PLAIN_COUNT, (performance.now() - start) / 1000];
}

async function webrtcConcurrent(router) {
	const start = performance.now();
	const transports = await Promise.all(
		Array.from({ length: CONCURRENT }, () =>
			router.createWebRtcTransport({ listenInfos: [LISTEN] })
		)
	);
	const elapsed = (performance.now() - start) / 1000;
	for (const transport of transports) {
		transport.close();
	}
	await router.dump();
	return [CONCURRENT, elapsed];
}

async function consumeConcurrent(router, state) {
	if (!state.producer) {
		const send = await router.createPlainTransport({ listenInfo: LISTEN, comedia: true });
		state.producer = await send.produce({
			kind: 'audio',
			rtpParameters: AUDIO_RTP_PARAMETERS,
		});
		state.transports = [];
		for (let i = 0; i < CONSUME_TRANSPORTS; i++) {
			state.transports.push(await router.createPlainTransport({ listenInfo: LISTEN }));
		}
	}
	const caps = router.rtpCapabilities;
	const start = performance.now();
	const consumers = await Promise.all(
		Array.from({ length: CONCURRENT }, (_, i) =>
			state.transports[i % CONSUME_TRANSPORTS].consume({
				producerId: state.producer.id,
				rtpCapabilities: caps,
			})
		)
	);
	const elapsed = (performance.now() - start) / 1000;
	for (const consumer of consumers) {
		consumer.close();
	}
	await router.dump();
	return [CONCURRENT, elapsed];
}

const SCENARIOS = {
	request_rtt: requestRtt,
	plain_create_close: plainCreateClose,
	webrtc_concurrent: webrtcConcurrent,
	consume_concurrent: consumeConcurrent,
};

async function newRouter() {
	const worker = await mediasoup.createWorker({ logLevel: 'warn' });
	const router = await worker.createRouter({ mediaCodecs: MEDIA_CODECS });
	return { worker, router };
}

async function closeWorker(worker) {
	// Node's Worker.close() kills the process without waiting for it: wait for the exit.
	const exited = new Promise((resolve) => worker.on('subprocessclose', resolve));
	worker.close();
	await exited;
}

// Standalone: every scenario, --runs times each, one JSON object on stdout.
async function standalone(runs, only) {
	const results = {};
	let workerRss = 0;
	for (const [name, fn] of Object.entries(SCENARIOS)) {
		if (only && !only.includes(name)) {
			continue;
		}
		const { worker, router } = await newRouter();
		const state = {};
		await fn(router, state); // warm-up
		const rates = [];
		for (let i = 0; i < runs; i++) {
			if (global.gc) {
				global.gc();
			}
			const [ops, seconds] = await fn(router, state);
			rates.push(ops / seconds);
		}
		workerRss = rssMb(worker.pid);
		await closeWorker(worker);
		results[name] = round1(median(rates));
		results[`${name}_runs`] = rates.map(round1);
	}
	if (global.gc) {
		global.gc();
	}
	results.rss_mb = round1(rssMb());
	results.worker_rss_mb = round1(workerRss);
	results.node_version = process.version;
	process.stdout.write(JSON.stringify(results) + '\n');
}

// --serve: driven by bench/run.py one JSON command per stdin line, so that the Python
// and Node runs of a scenario alternate under the same machine load. Commands:
// {"cmd": "start", "scenario": name} (fresh worker + warm-up), {"cmd": "run"} (one
// measured run -> {"ops", "seconds"}), {"cmd": "stop"} (-> worker RSS, closes it),
// {"cmd": "memory"} (-> own RSS), {"cmd": "exit"}.
async function serve() {
	let current = null;
	const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
	const rl = readline.createInterface({ input: process.stdin });
	for await (const line of rl) {
		const command = JSON.parse(line);
		if (command.cmd === 'start') {
			const { worker, router } = await newRouter();
			current = { worker, router, state: {}, fn: SCENARIOS[command.scenario] };
			await current.fn(router, current.state);
			reply({ ok: true });
		} else if (command.cmd === 'run') {
			if (global.gc) {
				global.gc();
			}
			const [ops, seconds] = await current.fn(current.router, current.state);
			reply({ ops, seconds });
		} else if (command.cmd === 'stop') {
			const workerRss = rssMb(current.worker.pid);
			await closeWorker(current.worker);
			current = null;
			reply({ worker_rss_mb: round1(workerRss) });
		} else if (command.cmd === 'memory') {
			if (global.gc) {
				global.gc();
			}
			reply({ rss_mb: round1(rssMb()), node_version: process.version });
		} else if (command.cmd === 'exit') {
			rl.close();
			break;
		}
	}
}

async function main() {
	const args = process.argv.slice(2);
	if (args.includes('--serve')) {
		await serve();
		return;
	}
	const runsAt = args.indexOf('--runs');
	const runs = runsAt >= 0 ? Number(args[runsAt + 1]) : 5;
	const onlyAt = args.indexOf('--only');
	const only = onlyAt >= 0 ? args[onlyAt + 1].split(',') : null;
	await standalone(runs, only);
}

main().catch((error) => {
	console.error(error);
	process.exit(1);
});
