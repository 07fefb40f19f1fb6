function (doc) {
  if (doc.type === 'task' && doc._attachments) {
    var files = {};
    for (var name in doc._attachments) {
      files[name] = {content_type: doc._attachments[name].content_type,
                     length: doc._attachments[name].length};
    }
    emit([doc.record, doc.order, doc.platform], files);
  }
}
