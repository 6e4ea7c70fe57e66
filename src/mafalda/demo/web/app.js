// The page of `mafalda demo`: join the room named in the URL (?room=NAME), publish the
// camera and microphone, show and play everyone else, highlight the active speaker,
// chat over a data channel. Bundled with mediasoup-client by scripts/build-demo.sh.
//
// URL parameters: room (default: a new random name), name (display name), simulcast
// (0 to send one video encoding instead of three), autojoin (1 to join at once).
//
// Signaling: JSON over one WebSocket (see src/mafalda/demo/protocol.py).

import { Device } from 'mediasoup-client';

const params = new URLSearchParams(location.search);
const ROOM_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

let roomId = params.get('room');
if (!roomId || !ROOM_PATTERN.test(roomId)) {
	roomId = `room-${Math.random().toString(36).slice(2, 8)}`;
	params.set('room', roomId);
	history.replaceState(null, '', `${location.pathname}?${params}`);
}
const simulcast = params.get('simulcast') !== '0';

const $ = (selector) => document.querySelector(selector);

// What the page knows; tests read it through window.demo.
const state = {
	roomId,
	displayName: params.get('name') || `guest-${Math.floor(Math.random() * 1000)}`,
	status: 'idle', // idle | joining | joined | left | error
	error: null,
	peerId: null,
	signaling: null,
	device: null,
	sendTransport: null,
	recvTransport: null,
	localStream: null,
	producers: new Map(), // producer id -> Producer
	consumers: new Map(), // consumer id -> { consumer, peerId }
	chatProducer: null,
	dataConsumers: new Map(), // data consumer id -> { dataConsumer, peerId }
	peers: new Map(), // peer id -> { displayName }
	activeSpeaker: null,
	chat: [], // { from, text, mine }
};

// -- signaling ------------------------------------------------------------------------

class Signaling {
	constructor(url) {
		this.url = url;
		this.nextId = 1;
		this.pending = new Map();
		this.onNotification = () => {};
		this.onClose = () => {};
	}

	open() {
		return new Promise((resolve, reject) => {
			const ws = new WebSocket(this.url);
			this.ws = ws;
			ws.onopen = () => resolve();
			ws.onerror = () => reject(new Error('cannot reach the signaling server'));
			ws.onmessage = (event) => this.receive(event.data);
			ws.onclose = (event) => {
				for (const { reject: fail } of this.pending.values()) {
					fail(new Error(`signaling closed (${event.code})`));
				}
				this.pending.clear();
				this.onClose(event);
			};
		});
	}

	receive(text) {
		let message;
		try {
			message = JSON.parse(text);
		} catch {
			console.warn('signaling: not JSON', text);
			return;
		}
		if (message.response) {
			const waiter = this.pending.get(message.id);
			if (!waiter) {
				console.warn('signaling: error', message.error);
				return;
			}
			this.pending.delete(message.id);
			if (message.ok) waiter.resolve(message.data);
			else waiter.reject(new Error(message.error));
		} else if (message.notification) {
			this.onNotification(message.method, message.data);
		}
	}

	request(method, data = {}) {
		const id = this.nextId++;
		return new Promise((resolve, reject) => {
			this.pending.set(id, { resolve, reject });
			this.ws.send(JSON.stringify({ id, method, data }));
		});
	}

	close() {
		this.ws?.close();
	}
}

// -- tiles ----------------------------------------------------------------------------

function tileOf(peerId) {
	let tile = document.querySelector(`.tile[data-peer-id="${CSS.escape(peerId)}"]`);
	if (!tile) {
		tile = document.createElement('div');
		tile.className = 'tile';
		tile.dataset.peerId = peerId;
		const video = document.createElement('video');
		video.autoplay = true;
		video.playsInline = true;
		video.muted = true; // sound plays through the tile's audio elements
		const label = document.createElement('div');
		label.className = 'label';
		tile.append(video, label);
		$('#tiles').append(tile);
	}
	return tile;
}

function setTileLabel(peerId, text) {
	tileOf(peerId).querySelector('.label').textContent = text;
}

function showTrack(peerId, track) {
	const tile = tileOf(peerId);
	if (track.kind === 'video') {
		const video = tile.querySelector('video');
		video.srcObject = new MediaStream([track]);
		video.play().catch(() => {});
		tile.classList.add('has-video');
	} else {
		const audio = document.createElement('audio');
		audio.autoplay = true;
		audio.dataset.trackId = track.id;
		audio.srcObject = new MediaStream([track]);
		tile.append(audio);
		audio.play().catch(() => {});
	}
}

function removeTile(peerId) {
	document.querySelector(`.tile[data-peer-id="${CSS.escape(peerId)}"]`)?.remove();
}

function highlightSpeaker(peerId) {
	state.activeSpeaker = peerId;
	for (const tile of document.querySelectorAll('.tile')) {
		tile.classList.toggle('speaking', tile.dataset.peerId === peerId);
	}
}

function setStatus(status, text) {
	state.status = status;
	$('#status').textContent = text ?? status;
	$('#join').hidden = status === 'joined' || status === 'joining';
	$('#leave').hidden = status !== 'joined';
	$('#chat-input').disabled = status !== 'joined';
}

// -- chat -----------------------------------------------------------------------------

function addChat(from, text, mine) {
	state.chat.push({ from, text, mine });
	const item = document.createElement('li');
	if (mine) item.className = 'mine';
	const who = document.createElement('b');
	who.textContent = `${from}: `;
	item.append(who, document.createTextNode(text));
	$('#messages').append(item);
	item.scrollIntoView({ block: 'end' });
}

function sendChat(text) {
	if (!state.chatProducer || state.chatProducer.readyState !== 'open') {
		throw new Error('chat is not open');
	}
	state.chatProducer.send(text);
	addChat(state.displayName, text, true);
}

// -- joining --------------------------------------------------------------------------

async function getLocalMedia() {
	const video = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } };
	for (const constraints of [{ audio: true, video }, { video }, { audio: true }]) {
		try {
			return await navigator.mediaDevices.getUserMedia(constraints);
		} catch (error) {
			console.warn('getUserMedia', constraints, error);
		}
	}
	return null;
}

function createTransport(direction, info) {
	const options = {
		id: info.id,
		iceParameters: info.iceParameters,
		iceCandidates: info.iceCandidates,
		dtlsParameters: info.dtlsParameters,
		sctpParameters: info.sctpParameters ?? undefined,
	};
	const transport =
		direction === 'send'
			? state.device.createSendTransport(options)
			: state.device.createRecvTransport(options);
	transport.on('connect', ({ dtlsParameters }, callback, errback) => {
		state.signaling
			.request('connectWebRtcTransport', { transportId: transport.id, dtlsParameters })
			.then(callback, errback);
	});
	if (direction === 'send') {
		transport.on('produce', ({ kind, rtpParameters }, callback, errback) => {
			state.signaling
				.request('produce', { transportId: transport.id, kind, rtpParameters })
				.then(({ id }) => callback({ id }), errback);
		});
		transport.on('producedata', ({ sctpStreamParameters, label, protocol }, callback, errback) => {
			state.signaling
				.request('produceData', { transportId: transport.id, sctpStreamParameters, label, protocol })
				.then(({ id }) => callback({ id }), errback);
		});
	}
	transport.on('connectionstatechange', (connectionState) => {
		console.info(`${direction} transport ${connectionState}`);
	});
	return transport;
}

async function consume(peerId, producerId) {
	const info = await state.signaling.request('consume', {
		transportId: state.recvTransport.id,
		producerId,
	});
	const consumer = await state.recvTransport.consume({
		id: info.id,
		producerId: info.producerId,
		kind: info.kind,
		rtpParameters: info.rtpParameters,
		appData: { peerId },
	});
	state.consumers.set(consumer.id, { consumer, peerId });
	showTrack(peerId, consumer.track);
	await state.signaling.request('resumeConsumer', { consumerId: consumer.id });
}

async function consumeData(peerId, dataProducerId) {
	const info = await state.signaling.request('consumeData', {
		transportId: state.recvTransport.id,
		dataProducerId,
	});
	const dataConsumer = await state.recvTransport.consumeData({
		id: info.id,
		dataProducerId: info.dataProducerId,
		sctpStreamParameters: info.sctpStreamParameters,
		label: info.label,
		protocol: info.protocol,
		appData: { peerId },
	});
	state.dataConsumers.set(dataConsumer.id, { dataConsumer, peerId });
	dataConsumer.on('message', (message) => {
		const text = typeof message === 'string' ? message : new TextDecoder().decode(message);
		addChat(state.peers.get(peerId)?.displayName ?? peerId, text, false);
	});
}

function report(what) {
	return (error) => console.error(what, error);
}

function addPeer(peer) {
	state.peers.set(peer.id, { displayName: peer.displayName });
	setTileLabel(peer.id, peer.displayName);
}

async function onNotification(method, data) {
	switch (method) {
		case 'peerJoined':
			addPeer(data);
			break;
		case 'peerLeft':
			state.peers.delete(data.id);
			for (const [id, entry] of state.consumers) {
				if (entry.peerId === data.id) state.consumers.delete(id);
			}
			removeTile(data.id);
			break;
		case 'newProducer':
			await consume(data.peerId, data.producerId).catch(report('consume'));
			break;
		case 'newDataProducer':
			await consumeData(data.peerId, data.dataProducerId).catch(report('consumeData'));
			break;
		case 'consumerClosed': {
			const entry = state.consumers.get(data.consumerId);
			if (entry) {
				const { consumer, peerId } = entry;
				consumer.close();
				state.consumers.delete(data.consumerId);
				const tile = tileOf(peerId);
				if (consumer.kind === 'video') {
					tile.querySelector('video').srcObject = null;
					tile.classList.remove('has-video');
				} else {
					tile.querySelector(`audio[data-track-id="${consumer.track.id}"]`)?.remove();
				}
			}
			break;
		}
		case 'dataConsumerClosed':
			state.dataConsumers.get(data.dataConsumerId)?.dataConsumer.close();
			state.dataConsumers.delete(data.dataConsumerId);
			break;
		case 'activeSpeaker':
			highlightSpeaker(data.peerId);
			break;
		default:
			break;
	}
}

async function join() {
	if (state.status === 'joining' || state.status === 'joined') return;
	state.displayName = $('#name').value.trim() || state.displayName;
	setStatus('joining', 'joining…');
	try {
		const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
		const signaling = new Signaling(wsUrl);
		state.signaling = signaling;
		await signaling.open();
		// Notifications wait until the transports exist.
		let transportsReady;
		const ready = new Promise((resolve) => {
			transportsReady = resolve;
		});
		let queue = ready;
		signaling.onNotification = (method, data) => {
			queue = queue.then(() => onNotification(method, data)).catch(report(method));
		};
		signaling.onClose = () => {
			if (state.status === 'joined' || state.status === 'joining') {
				setStatus('error', 'disconnected from the server');
			}
		};

		const { rtpCapabilities } = await signaling.request('getRouterRtpCapabilities');
		state.device = await Device.factory();
		await state.device.load({ routerRtpCapabilities: rtpCapabilities });
		const joined = await signaling.request('join', {
			roomId: state.roomId,
			displayName: state.displayName,
			rtpCapabilities: state.device.rtpCapabilities,
			sctpCapabilities: state.device.sctpCapabilities,
		});
		state.peerId = joined.peerId;
		setTileLabel(state.peerId, `${state.displayName} (you)`);
		tileOf(state.peerId).classList.add('local');

		state.sendTransport = createTransport(
			'send',
			await signaling.request('createWebRtcTransport', { direction: 'send' }),
		);
		state.recvTransport = createTransport(
			'recv',
			await signaling.request('createWebRtcTransport', { direction: 'recv' }),
		);
		transportsReady();

		for (const peer of joined.peers) {
			addPeer(peer);
			for (const producer of peer.producers) {
				queue = queue.then(() => consume(peer.id, producer.id)).catch(report('consume'));
			}
			for (const dataProducer of peer.dataProducers) {
				queue = queue
					.then(() => consumeData(peer.id, dataProducer.id))
					.catch(report('consumeData'));
			}
		}

		if (joined.activeSpeaker) highlightSpeaker(joined.activeSpeaker.peerId);

		state.chatProducer = await state.sendTransport.produceData({ ordered: true, label: 'chat' });

		state.localStream = await getLocalMedia();
		if (!state.localStream) {
			$('#status').textContent = 'no camera or microphone: receiving only';
		}
		for (const track of state.localStream?.getTracks() ?? []) {
			const options = { track };
			if (track.kind === 'video') {
				showTrack(state.peerId, track);
				options.codecOptions = { videoGoogleStartBitrate: 1000 };
				if (simulcast) {
					options.encodings = [
						{ scaleResolutionDownBy: 4, maxBitrate: 150000 },
						{ scaleResolutionDownBy: 2, maxBitrate: 500000 },
						{ scaleResolutionDownBy: 1, maxBitrate: 1200000 },
					];
				}
			}
			const producer = await state.sendTransport.produce(options);
			state.producers.set(producer.id, producer);
		}
		await queue;
		setStatus('joined', `in room ${state.roomId} as ${state.displayName}`);
	} catch (error) {
		console.error('join', error);
		state.error = String(error?.message ?? error);
		setStatus('error', `error: ${state.error}`);
	}
}

async function leave() {
	try {
		await state.signaling?.request('leave');
	} catch (error) {
		console.warn('leave', error);
	}
	state.signaling?.close();
	state.sendTransport?.close();
	state.recvTransport?.close();
	for (const track of state.localStream?.getTracks() ?? []) track.stop();
	state.sendTransport = state.recvTransport = state.localStream = state.chatProducer = null;
	state.producers.clear();
	state.consumers.clear();
	state.dataConsumers.clear();
	state.peers.clear();
	$('#tiles').replaceChildren();
	setStatus('left', 'left the room');
}

// What the tests (and curious people, in the console) use.
async function remoteVideoStats() {
	const result = [];
	for (const { consumer, peerId } of state.consumers.values()) {
		if (consumer.kind !== 'video' || consumer.closed) continue;
		const statsReport = await consumer.getStats();
		for (const stat of statsReport.values()) {
			if (stat.type === 'inbound-rtp' && stat.kind === 'video') {
				result.push({
					peerId,
					consumerId: consumer.id,
					framesDecoded: stat.framesDecoded ?? 0,
					frameWidth: stat.frameWidth ?? 0,
					frameHeight: stat.frameHeight ?? 0,
					bytesReceived: stat.bytesReceived ?? 0,
				});
			}
		}
	}
	return result;
}

window.demo = { state, join, leave, sendChat, remoteVideoStats };

// -- page -----------------------------------------------------------------------------

$('#room').textContent = state.roomId;
$('#name').value = state.displayName;
$('#join').addEventListener('click', () => join());
$('#leave').addEventListener('click', () => leave());
$('#chat-form').addEventListener('submit', (event) => {
	event.preventDefault();
	const input = $('#chat-input');
	const text = input.value.trim();
	if (!text) return;
	try {
		sendChat(text);
		input.value = '';
	} catch (error) {
		$('#status').textContent = String(error.message);
	}
});
setStatus('idle', 'press Join to enter the room');
if (params.get('autojoin') === '1') join();
