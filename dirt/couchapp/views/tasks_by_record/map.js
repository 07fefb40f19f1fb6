function (doc) {
  if (doc.type === 'task') {
    emit([doc.record, doc.order, doc.platform], {
      name: doc.name, key: doc.key || null, platform: doc.platform, state: doc.state, host: doc.host,
      duration: doc.duration, reason: doc.reason, attempts: (doc.attempts || []).length,
      started: doc.started, ended: doc.ended
    });
  }
}
