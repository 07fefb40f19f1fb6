function (doc) {
  if (doc.type === 'task') {
    emit([doc.name, doc.record_created, doc.platform], {
      record: doc.record, platform: doc.platform, key: doc.key || null, state: doc.state,
      duration: doc.duration, host: doc.host, reason: doc.reason
    });
  }
}
